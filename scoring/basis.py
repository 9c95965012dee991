"""A round basis: a few directions that the round's submissions mostly lie along.

Submissions of one round are built from the same features towards the
same target, so their centred, normalised vectors share a few dominant
directions. Projecting every submission once onto ``d`` of them (the
principal directions of a sample of the round) leaves ``d``
coefficients and a residual; two submissions' correlation is then known
to within the product of their residual norms from their coefficients
alone (:func:`scoring.bounds.projected_widths`), which settles almost
every pair of different model families without reading their vectors.

Nothing depends on how good the basis is for correctness: the bounds
hold for any float32 matrix, with its distance from orthonormal
(``eta``) measured after rounding. A poorer basis only leaves more pairs
for the block products.
"""
import dataclasses
import logging

import numpy as np

from scoring.bounds import (
    BLOCK,
    basis_error,
    coefficient_error,
    projection_size,
    residual_bound,
)

log = logging.getLogger(__name__)

#: Directions in a round basis. 20 model families need about that many;
#: more directions shrink residuals only slowly (a submission's own noise
#: is in no basis) while every coefficient costs a multiply per pair.
BASIS_SIZE = 32
#: Submissions the principal directions are computed from.
BASIS_SAMPLE = 128
#: A basis further than this from orthonormal after rounding is not used
#: (float32 rounding of an orthonormal one gives about 1e-6).
MAX_BASIS_ERROR = 1e-3
#: Directions carrying less than this share of the sample's variance are
#: dropped: normalising them would amplify rounding noise.
MIN_VARIANCE_SHARE = 1e-9


@dataclasses.dataclass(frozen=True)
class Projection:
    """Stored coefficients of some vectors, with the error terms of the bound.

    ``coef`` (rows x d, float32), and per row ``rho`` (residual norm
    bound), ``delta`` (coefficient error bound) and ``size`` (coefficient
    norm bound); see :mod:`scoring.bounds`.
    """

    coef: np.ndarray
    rho: np.ndarray
    delta: np.ndarray
    size: np.ndarray


class RoundBasis:
    """``d`` float32 rows of length ``blocks * BLOCK``, kept as ``(blocks, d, BLOCK)``
    so that one batched product gives a vector's block dot products."""

    def __init__(self, rows, n):
        d = rows.shape[0]
        self.size = d
        self.n = n
        self.eta = basis_error(rows)
        self.blocks = np.ascontiguousarray(rows.reshape(d, -1, BLOCK).transpose(1, 0, 2))

    @property
    def nbytes(self):
        return self.blocks.nbytes

    @classmethod
    def from_sample(cls, sample, norms, n, size=BASIS_SIZE):
        """The principal directions of ``sample`` (rows of stored float32 blocks,
        each normalised by its norm), or None when they are unusable.

        Computed in float32 (the accuracy of the directions does not matter,
        only that of ``eta``), re-orthonormalised in float64 and rounded.
        """
        count = sample.shape[0]
        flat = sample.reshape(count, -1) / np.asarray(norms, dtype=np.float32)[:, None]
        if count < 2 or not np.all(np.isfinite(flat)):
            return None
        values, vectors = np.linalg.eigh((flat @ flat.T).astype(np.float64))
        keep = np.argsort(values)[::-1][:min(size, count, n)]
        keep = keep[values[keep] > MIN_VARIANCE_SHARE * max(float(values.sum()), 0.0)]
        if not keep.size:
            return None
        directions = vectors[:, keep].T.astype(np.float32) @ flat
        orthonormal = np.linalg.qr(directions.astype(np.float64).T)[0].T
        rows = orthonormal.astype(np.float32)
        rows[:, n:] = 0.0
        basis = cls(rows, n)
        if not basis.eta <= MAX_BASIS_ERROR:
            log.info("round basis of %d directions is %.3g from orthonormal; not used", rows.shape[0], basis.eta)
            return None
        return basis

    def project(self, data, norms, scales):
        """:class:`Projection` of stored vectors ``data`` (rows x blocks x BLOCK, float32).

        Each coefficient is a float32 dot product per block, summed in
        float64 and divided by the vector's float64 norm: the computation
        :func:`scoring.bounds.coefficient_error` bounds.
        """
        norms = np.asarray(norms, dtype=np.float64)
        scales = np.asarray(scales, dtype=np.float64)
        products = np.matmul(self.blocks, data.transpose(1, 2, 0))  # (blocks, d, rows)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            coef = (products.sum(axis=0, dtype=np.float64) / norms).T
            coef_norm = np.sqrt(np.einsum("rd,rd->r", coef, coef))
            coef32 = coef.astype(np.float32)
            wide = coef32.astype(np.float64)
            coef32_norm = np.sqrt(np.einsum("rd,rd->r", wide, wide))
        delta = coefficient_error(self.n, self.blocks.shape[0], self.size, self.eta, coef_norm, scales, norms)
        return Projection(
            coef=coef32,
            rho=residual_bound(self.eta, coef32_norm, scales, delta),
            delta=delta,
            size=projection_size(self.eta, scales, delta),
        )
