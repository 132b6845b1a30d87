"""Type stubs of wgpu_rnn: PyTorch's RNN, LSTM and GRU, exact, on any GPU through wgpu."""

import os
from collections import OrderedDict
from typing import Any, Iterator, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

__version__: str

ArrayF32 = npt.NDArray[np.float32]
ArrayLike = Any  # numpy arrays, torch CPU tensors, nested lists of a floating dtype
PathLike = Union[str, os.PathLike]

def adapters() -> list[dict[str, Any]]: ...
def from_torch(module: Any, device: Optional[str] = None) -> Union[RNN, LSTM, GRU]: ...

class Tape:
    output: ArrayF32
    hidden: Union[ArrayF32, Tuple[ArrayF32, ArrayF32]]
    def __iter__(self) -> Iterator[Any]: ...
    def backward(
        self,
        grad_output: ArrayLike,
        grad_h_n: Optional[ArrayLike] = None,
        grad_c_n: Optional[ArrayLike] = None,
    ) -> OrderedDict[str, ArrayF32]: ...

class Stream:
    def step(self, x: ArrayLike) -> ArrayF32: ...
    def state(self) -> Union[ArrayF32, Tuple[ArrayF32, ArrayF32]]: ...
    def reset(self) -> None: ...

class _Recurrent:
    input_size: int
    hidden_size: int
    num_layers: int
    bias: bool
    batch_first: bool
    dropout: float
    bidirectional: bool
    @property
    def device(self) -> str: ...
    def state_dict(self) -> OrderedDict[str, ArrayF32]: ...
    def load_state_dict(self, state_dict: Mapping[str, ArrayLike]) -> None: ...
    def load(self, path: PathLike) -> None: ...
    def save(self, path: PathLike) -> None: ...
    def stream(self, batch_size: int) -> Stream: ...

class RNN(_Recurrent):
    nonlinearity: str
    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        nonlinearity: str = "tanh",
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        *,
        device: Optional[str] = None,
        seed: Optional[int] = None,
    ) -> None: ...
    def __call__(
        self, input: ArrayLike, hx: Optional[ArrayLike] = None, *,
        lengths: Optional[Sequence[int]] = None,
    ) -> Tuple[ArrayF32, ArrayF32]: ...
    def forward(
        self, input: ArrayLike, hx: Optional[ArrayLike] = None, *,
        lengths: Optional[Sequence[int]] = None, train: bool = False,
    ) -> Any: ...

class GRU(_Recurrent):
    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        *,
        device: Optional[str] = None,
        seed: Optional[int] = None,
    ) -> None: ...
    def __call__(
        self, input: ArrayLike, hx: Optional[ArrayLike] = None, *,
        lengths: Optional[Sequence[int]] = None,
    ) -> Tuple[ArrayF32, ArrayF32]: ...
    def forward(
        self, input: ArrayLike, hx: Optional[ArrayLike] = None, *,
        lengths: Optional[Sequence[int]] = None, train: bool = False,
    ) -> Any: ...

class LSTM(_Recurrent):
    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        *,
        device: Optional[str] = None,
        seed: Optional[int] = None,
    ) -> None: ...
    def __call__(
        self, input: ArrayLike, hx: Optional[Tuple[ArrayLike, ArrayLike]] = None, *,
        lengths: Optional[Sequence[int]] = None,
    ) -> Tuple[ArrayF32, Tuple[ArrayF32, ArrayF32]]: ...
    def forward(
        self, input: ArrayLike, hx: Optional[Tuple[ArrayLike, ArrayLike]] = None, *,
        lengths: Optional[Sequence[int]] = None, train: bool = False,
    ) -> Any: ...
