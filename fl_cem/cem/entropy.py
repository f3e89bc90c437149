"""``ConditionalEntropy``: the one CEM object the centralized trainer and the federated apps share.

It holds the class-conditional Gaussian mixture of the features ``z_hat`` (the encoder's
output after the defense transform, before the noise ``eps ~ N(0, sigma^2 I)`` is added),
refits it once per epoch (Algorithm 1, lines 4-5), turns each batch into the loss ``L_C``
(lines 9-14) and reports the bounds of Theorems 1 and 2.

Why ``z_hat`` and not the noisy ``z``: Theorem 2 models ``z = z_hat + eps`` with
``z_hat ~ sum_j pi_j N(mu_j, Sigma_j)`` and adds ``Sigma_p`` analytically in
``log(|Sigma_j + Sigma_p| / |Sigma_p|)``. Fitting ``Sigma_j`` on noisy features would count the
noise twice.

All state is plain tensors (``state_dict``), small enough for checkpoints and Flower messages:
centres ``(K, d)``, weights ``(K,)``, covariances (``(K, d, d)``, ``(K, d)`` or ``(K,)``),
counts ``(K,)`` and the fitted scalar variances ``(K,)`` the official variant blends with.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from fl_cem.cem.bound import gaussian_entropy, mixture_bound, mse_lower_bound
from fl_cem.cem.covariance import convert, derivable_modes, log_det_ratio
from fl_cem.cem.kmeans import fit_class_centres
from fl_cem.cem.official import official_batch, official_lambda
from fl_cem.cem.paper import paper_batch
from fl_cem.cem.stats import MixtureStats, assign, check_labels, flatten_features
from fl_cem.config import CEMConfig

_STATE_KEYS = ("centres", "weights", "cov", "counts", "epoch_var")


class ConditionalEntropy:
    """Class-conditional Gaussian mixture of ``z_hat`` and the CEM loss ``L_C`` (Eq. 5-7).

    Parameters
    ----------
    cfg
        The ``cem`` config section (lambda, clusters per class, covariance mode, variant, ...).
    sigma
        Standard deviation of the smashed-data noise, ``Sigma_p = sigma^2 I``.
    num_classes
        ``C``; the mixture has ``K = C * cfg.clusters_per_class`` components, component ``j``
        belonging to class ``j // k``.
    dataset_size
        ``N`` of Eq. 5: the number of training samples the mixture describes (a federated
        client passes its own partition size, or the federation's with ``cem.federation =
        global``: :func:`fl_cem.federated.client_logic.mixture_size`).

    Raises
    ------
    ValueError
        ``sigma = 0`` with ``cem.lambda > 0`` and the paper variant, whose ratio
        ``|Sigma_j + Sigma_p| / |Sigma_p|`` is infinite; with ``lambda = 0`` the object is still
        built, so the bound can be reported (as ``-inf``) for noise-free baselines.
    """

    def __init__(self, cfg: CEMConfig, sigma: float, num_classes: int, dataset_size: int) -> None:
        if sigma < 0:
            raise ValueError(f"noise.sigma must be >= 0; got {sigma}")
        if sigma == 0 and cfg.variant == "paper" and cfg.lam > 0:
            raise ValueError(
                "cem.lambda > 0 with cem.variant = 'paper' needs noise.sigma > 0: "
                "log(|Sigma + Sigma_p| / |Sigma_p|) is infinite for Sigma_p = 0"
            )
        if num_classes <= 0 or dataset_size <= 0:
            raise ValueError(f"need num_classes > 0 and dataset_size > 0; got {num_classes} and {dataset_size}")
        self.cfg = cfg
        self.sigma = float(sigma)
        self.num_classes = num_classes
        self.dataset_size = dataset_size
        self.clusters_per_class = cfg.clusters_per_class
        self.num_clusters = num_classes * cfg.clusters_per_class
        self.centres = torch.empty(0)
        self.weights = torch.empty(0)
        self.cov = torch.empty(0)
        self.counts = torch.empty(0, dtype=torch.long)
        self.epoch_var = torch.empty(0)
        self._log_det = torch.empty(0)

    # ------------------------------------------------------------------ fitting
    @property
    def fitted(self) -> bool:
        """Whether a mixture is loaded (``loss`` and ``report`` need one)."""
        return self.weights.numel() > 0

    @torch.no_grad()
    def refit(self, z_hat: Tensor, labels: Tensor, generator: torch.Generator) -> None:
        """Fit the mixture on the whole epoch's features (Algorithm 1, line 5).

        Per class, ``cfg.kmeans_iters`` Lloyd iterations from k-means++ seeds (first fit) or
        from the previous centres, then ``pi_j`` = share of samples, ``mu_j`` = mean and
        ``Sigma_j`` = covariance of each cluster (maximum likelihood given the hard assignment).

        Raises
        ------
        ValueError
            A class with fewer samples than ``cem.clusters-per-class`` (absent classes are
            allowed: their clusters get ``pi = 0``, as on a label-skewed federated client).
        """
        z = flatten_features(z_hat).detach()
        labels = check_labels(labels, len(z), self.num_classes).to(z.device)
        previous = warm = None
        if self.centres.numel() and self.centres.shape[1] == z.shape[1]:
            previous = self.centres.to(z)
            # Centres of classes that had samples last time are meaningful; set_centres() ones all are.
            held = self.counts.reshape(self.num_classes, -1).sum(1) > 0 if self.counts.numel() else None
            warm = held if held is not None else torch.ones(self.num_classes, dtype=torch.bool)
        centres = fit_class_centres(
            z, labels, self.num_classes, self.clusters_per_class, self.cfg.kmeans_iters, generator, previous, warm
        )
        self.load_stats(MixtureStats.compute(z, labels, centres, self.clusters_per_class, self.cfg.covariance))

    def local_stats(self, z_hat: Tensor, labels: Tensor) -> MixtureStats:
        """Sufficient statistics of ``z_hat`` assigned to the current centres (federated clients).

        Statistics computed by several clients about the same centres merge exactly with
        :meth:`MixtureStats.merge`; :meth:`load_stats` turns the sum into the mixture.
        """
        if not self.centres.numel():
            raise RuntimeError("local_stats needs centres: call refit(), set_centres() or load_state_dict() first")
        z = flatten_features(z_hat).detach()
        labels = check_labels(labels, len(z), self.num_classes).to(z.device)
        return MixtureStats.compute(z, labels, self.centres.to(z), self.clusters_per_class, self.cfg.covariance)

    @torch.no_grad()
    def load_stats(self, stats: MixtureStats) -> None:
        """Set the mixture to the maximum-likelihood fit of ``stats`` (one machine or merged)."""
        if stats.centres.shape[0] != self.num_clusters:
            raise ValueError(f"statistics hold {stats.centres.shape[0]} clusters; this mixture has {self.num_clusters}")
        if stats.mode != self.cfg.covariance:
            raise ValueError(f"statistics are {stats.mode!r} but cem.covariance is {self.cfg.covariance!r}")
        mixture = stats.mixture()
        self._set_state(mixture.means, mixture.weights, mixture.cov, stats.counts, self._scalar_var(mixture.cov))

    def set_centres(self, centres: Tensor) -> None:
        """Replace the centres that assignments use (e.g. the server's combined centres).

        The weights and covariances are left as they are; :meth:`local_stats` followed by
        :meth:`load_stats` gives the mixture that goes with the new centres.
        """
        if centres.dim() != 2 or centres.shape[0] != self.num_clusters:
            raise ValueError(f"centres must be ({self.num_clusters}, d); got {tuple(centres.shape)}")
        self.centres = centres.detach().clone()

    # ------------------------------------------------------------------ the loss
    def loss(self, z_hat: Tensor, labels: Tensor, update: bool = True) -> Tensor:
        """``L_C`` of one batch (Eq. 7 after Eq. 5-6, or the official variant's loss).

        Each feature is assigned to the nearest centre of its own class. The gradient reaches
        ``z_hat`` only, hence only the encoder. With ``update`` (the default) the stored
        weights and covariances take the batch's detached values, like batch-norm running
        statistics; the official variant keeps the fitted values, as the authors' code does.

        Parameters
        ----------
        z_hat
            ``(B, C, H, W)`` or ``(B, d)`` features before noise, any floating dtype.
        labels
            ``(B,)`` class labels.
        update
            Write the batch's statistics back (paper variant).

        Returns
        -------
        Tensor
            Scalar loss, float32 (float64 for float64 input).
        """
        if not self.fitted:
            raise RuntimeError("the CEM mixture is not fitted: call refit() or load_stats() first")
        z = flatten_features(z_hat)
        labels = check_labels(labels, len(z), self.num_classes).to(z.device)
        if self.centres.shape[1] != z.shape[1]:
            raise ValueError(f"features have d = {z.shape[1]}; the mixture was fitted with d = {self.centres.shape[1]}")
        self._to(z.device)
        index = assign(z.detach(), labels, self.centres, self.clusters_per_class)
        if self.cfg.variant == "official":
            return official_batch(
                z,
                index,
                labels,
                self.centres,
                self.weights,
                self.epoch_var,
                self.clusters_per_class,
                class_size=self.dataset_size / self.num_classes,
                sigma=self.sigma,
            )
        if self.sigma == 0:
            raise ValueError("the paper's L_C needs noise.sigma > 0: log(|Sigma + Sigma_p| / |Sigma_p|) is infinite")
        step = paper_batch(
            z,
            index,
            self.centres,
            self.weights,
            self.cov,
            self._log_det,
            self.dataset_size,
            self.sigma,
            self.cfg.covariance,
        )
        if update:
            dtype = self.weights.dtype
            self.weights = step.weights.to(dtype)
            self.cov = self.cov.index_put((step.present,), step.cov.to(dtype))
            self._log_det = self._log_det.index_put((step.present,), step.log_det.to(dtype))
        return step.loss

    def effective_lambda(self, lr: float) -> float:
        """Weight of ``L_C`` in Eq. 8 at learning rate ``lr``.

        ``cfg.lam`` for the paper; the official code rescales it with the learning rate
        (:func:`fl_cem.cem.official.official_lambda`).
        """
        if self.cfg.variant == "official":
            return official_lambda(self.cfg.lam, lr)
        return self.cfg.lam

    # ------------------------------------------------------------------ reporting
    def report(self, data_dim: int | None = None, data_var: float | None = None, data_entropy: float | None = None) -> dict[str, float]:
        """Bounds and cluster occupancy of the stored mixture, for TensorBoard and results.json.

        Keys (all floats; empty dict before the first fit):

        * ``lc``: ``L_C`` of Eq. 7 in the configured covariance mode; ``hxz_relative = -lc``;
        * ``lc_<mode>`` for every mode the stored covariance can be coarsened to
          (full -> diag -> isotropic); ``pi_entropy``: the ``-sum pi log pi`` part;
        * with ``data_dim`` (``d_x``) and ``data_var`` (``v_x``, mean per-pixel variance in
          [0, 1]): ``hx_gaussian``, ``hxz_absolute = hx_gaussian - lc`` and Theorem 1's
          ``mse_lower_bound = v_x exp(-2 lc / d_x)`` (see :mod:`fl_cem.cem.bound`);
        * with ``data_dim`` and ``data_entropy`` (``H_F``, the full-covariance Gaussian entropy,
          :attr:`fl_cem.data.DataSplits.pixel_entropy`): ``hx_gaussian_full``,
          ``hxz_absolute_full = H_F - lc`` and ``mse_lower_bound_full``, the same bound with the
          tighter ``H(x)`` estimate (never above ``mse_lower_bound``);
        * ``clusters``, ``clusters_empty``, ``cluster_size_min``, ``cluster_size_max`` from
          the last fit's counts.

        With ``sigma = 0`` the ratio is infinite: ``lc = inf``, ``hxz_* = -inf`` and the MSE
        bound is 0 (true but empty).
        """
        if not self.fitted:
            return {}
        weights = self.weights.double().cpu()
        out: dict[str, float] = {}
        for mode in derivable_modes(self.cfg.covariance):
            out[f"lc_{mode}"] = self._bound(weights, mode)
        lc = out[f"lc_{self.cfg.covariance}"]
        out["lc"] = lc
        out["hxz_relative"] = -lc
        out["pi_entropy"] = float(torch.special.entr(weights).sum())
        if data_dim is not None and data_var is not None:
            hx = gaussian_entropy(data_dim, data_var)
            out["hx_gaussian"] = hx
            out["hxz_absolute"] = hx - lc
            out["mse_lower_bound"] = mse_lower_bound(hx - lc, data_dim)
        if data_dim is not None and data_entropy is not None:
            out["hx_gaussian_full"] = data_entropy
            out["hxz_absolute_full"] = data_entropy - lc
            out["mse_lower_bound_full"] = mse_lower_bound(data_entropy - lc, data_dim)
        counts = self.counts.double()
        out["clusters"] = float(self.num_clusters)
        out["clusters_empty"] = float((counts == 0).sum())
        out["cluster_size_min"] = float(counts.min())
        out["cluster_size_max"] = float(counts.max())
        return out

    def _bound(self, weights: Tensor, mode: str) -> float:
        if self.sigma == 0:
            return math.inf
        cov = convert(self.cov.double().cpu(), self.cfg.covariance, mode)
        return float(mixture_bound(weights, log_det_ratio(cov, mode, self.centres.shape[1], self.sigma)))

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Tensor]:
        """Plain tensors (empty before the first fit), for checkpoints and Flower ``ArrayRecord``s."""
        return {key: getattr(self, key).detach().clone() for key in _STATE_KEYS}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore :meth:`state_dict` output; an empty state makes the object unfitted."""
        missing = [key for key in _STATE_KEYS if key not in state]
        if missing:
            raise ValueError(f"CEM state lacks {', '.join(missing)}")
        size = state["weights"].shape[0] if state["weights"].numel() else 0
        if size:
            if size != self.num_clusters:
                raise ValueError(f"CEM state has {size} clusters; this mixture has {self.num_clusters}")
            expected = {"full": 3, "diag": 2, "isotropic": 1}[self.cfg.covariance]
            if state["cov"].dim() != expected:
                raise ValueError(
                    f"CEM state has {state['cov'].dim()}-d covariances; "
                    f"cem.covariance = {self.cfg.covariance!r} needs {expected}-d"
                )
        self._set_state(state["centres"], state["weights"], state["cov"], state["counts"].long(), state["epoch_var"])

    def _set_state(self, centres: Tensor, weights: Tensor, cov: Tensor, counts: Tensor, epoch_var: Tensor) -> None:
        self.centres, self.weights, self.cov = centres.clone(), weights.clone(), cov.clone()
        self.counts, self.epoch_var = counts.clone(), epoch_var.clone()
        if weights.numel() and self.sigma > 0:
            self._log_det = log_det_ratio(cov, self.cfg.covariance, centres.shape[-1], self.sigma)
        else:
            self._log_det = torch.zeros_like(weights)

    def _scalar_var(self, cov: Tensor) -> Tensor:
        """``trace(Sigma_j) / d``: the per-cluster variance the official ``kmeans_cuda`` returns."""
        return convert(cov, self.cfg.covariance, "isotropic")

    def _to(self, device: torch.device) -> None:
        """Follow the features' device (``Tensor.to`` is a no-op where it already matches)."""
        for key in (*_STATE_KEYS, "_log_det"):
            setattr(self, key, getattr(self, key).to(device))
