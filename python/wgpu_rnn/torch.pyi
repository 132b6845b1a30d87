"""Type stubs of wgpu_rnn.torch: torch.nn.Module drop-ins for nn.RNN, nn.LSTM and nn.GRU."""

from typing import Optional, Tuple, Union

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

_Input = Union[Tensor, PackedSequence]

class _Recurrent(nn.Module):
    input_size: int
    hidden_size: int
    num_layers: int
    bias: bool
    batch_first: bool
    dropout: float
    bidirectional: bool
    adapter: Optional[str]
    def reset_parameters(self) -> None: ...
    def flatten_parameters(self) -> None: ...

class RNN(_Recurrent):
    nonlinearity: str
    def __init__(
        self, input_size: int, hidden_size: int, num_layers: int = 1,
        nonlinearity: str = "tanh", bias: bool = True, batch_first: bool = False,
        dropout: float = 0.0, bidirectional: bool = False, device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None, *, adapter: Optional[str] = None,
    ) -> None: ...
    def forward(
        self, input: _Input, hx: Optional[Tensor] = None
    ) -> Tuple[_Input, Tensor]: ...

class GRU(_Recurrent):
    def __init__(
        self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
        batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
        device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None, *,
        adapter: Optional[str] = None,
    ) -> None: ...
    def forward(
        self, input: _Input, hx: Optional[Tensor] = None
    ) -> Tuple[_Input, Tensor]: ...

class LSTM(_Recurrent):
    def __init__(
        self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
        batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
        device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None, *,
        adapter: Optional[str] = None,
    ) -> None: ...
    def forward(
        self, input: _Input, hx: Optional[Tuple[Tensor, Tensor]] = None
    ) -> Tuple[_Input, Tuple[Tensor, Tensor]]: ...
