"""Type stubs of xcache's native module (python/src/lib.rs). The public API re-exports
these from ``xcache``; ``xcache.Cache`` subclasses ``_native.Cache``."""

from os import PathLike
from typing import Any, Dict, List, Literal, Mapping, Optional, Sequence, Tuple, Union

_Path = Union[str, PathLike[str]]
_Text = Union[str, bytes]
_Headers = Union[Mapping[str, _Text], Sequence[Union[_Path, Tuple[str, _Text]]]]

class Error(Exception):
    """Every error xcache raises. ``kind`` is the CLI's word for it."""

    kind: str

class CompileError(Error):
    """The compiler failed."""

    command: str
    output: str
    kept_source: str
    workdir: str
    status: Optional[int]

class TemplateError(Error):
    """A template is unknown or was given a bad parameter."""

    template: str
    message: str
    parameter: Optional[str]
    offset: Optional[int]

class UntrustedCacheError(Error):
    """The cache directory fails the trust checks."""

    path: str
    reason: str
    fix: str

class RefusedFlagError(Error):
    """A compiler flag xcache will not pass on (kind ``invalid-request``)."""

    flag: str
    reason: str
    fix: str

class LockTimeout(Error):
    """A lock wait reached the cache's lock_timeout."""

    path: str
    waited: float
    holder: Optional[str]

class Library:
    """A compiled, loaded library; it stays loaded, and its file in place, while this
    object lives."""

    @property
    def path(self) -> str: ...
    @property
    def key(self) -> str: ...
    @property
    def hit(self) -> bool: ...
    @property
    def tier(self) -> Literal["local", "remote"]: ...
    @property
    def unrecorded(self) -> str | None: ...
    @property
    def compile_ms(self) -> int: ...
    @property
    def elapsed(self) -> float: ...
    @property
    def lock_wait(self) -> float: ...
    @property
    def compiler_output(self) -> str: ...
    @property
    def warnings(self) -> List[str]: ...
    @property
    def pinned(self) -> bool: ...
    def symbol(self, name: str) -> int: ...
    def _checked_load_name(self) -> _CheckedLoadName: ...
    def ctypes_function(self, name: str, restype: Any, argtypes: Sequence[Any]) -> Any: ...

class _CheckedLoadName:
    @property
    def path(self) -> Optional[str]: ...
    def close(self) -> None: ...

class Group:
    """Files another compiler built, kept by xcache's store; pinned while it lives."""

    @property
    def key(self) -> str: ...
    @property
    def hit(self) -> bool: ...
    @property
    def tier(self) -> Literal["local", "remote"]: ...
    @property
    def producer(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def compile_ms(self) -> int: ...
    @property
    def warnings(self) -> List[str]: ...
    @property
    def files(self) -> Dict[str, str]: ...
    def path(self, name: str) -> str: ...
    def read(self, name: str) -> bytes: ...

class GroupLease:
    """The right to publish a group nobody has yet."""

    def add(self, name: str, data: Union[bytes, str]) -> str: ...
    def publish(self, compile_seconds: Optional[float] = None) -> Group: ...
    def abandon(self) -> None: ...
    @property
    def key(self) -> str: ...
    def __enter__(self) -> GroupLease: ...
    def __exit__(self, *args: Any) -> bool: ...

_Stream = Any
"""An int handle (``cudaStream_t``), a ``cupy.cuda.Stream`` or a ``torch.cuda.Stream``."""

class CudaModule:
    """CUDA device code compiled by NVRTC through the cache; loaded on the GPU at its
    first launch."""

    @property
    def key(self) -> str: ...
    @property
    def path(self) -> str: ...
    @property
    def arch(self) -> str: ...
    @property
    def kind(self) -> Literal["cubin", "ptx"]: ...
    @property
    def hit(self) -> bool: ...
    @property
    def compile_ms(self) -> int: ...
    @property
    def lock_wait(self) -> float: ...
    @property
    def compiler_output(self) -> str: ...
    @property
    def warnings(self) -> List[str]: ...
    @property
    def unrecorded(self) -> Optional[str]: ...
    def image(self) -> bytes: ...
    @property
    def kernel_names(self) -> List[str]: ...
    def get_function(self, name: str) -> CudaKernel: ...

class CudaKernel:
    """A kernel of a :class:`CudaModule`, called as CuPy's ``RawKernel``:
    ``k(grid, block, args, shared_mem=0, stream=None)``."""

    def __call__(
        self,
        grid: Union[int, Tuple[int, ...]],
        block: Union[int, Tuple[int, ...]],
        args: Sequence[Any],
        *,
        shared_mem: int = 0,
        stream: _Stream = None,
    ) -> None: ...
    @property
    def name(self) -> str: ...
    @property
    def module(self) -> CudaModule: ...

class Elemwise:
    """A compiled elemwise kernel: ``f(a, b, ..., out=None)``."""

    def __call__(self, *inputs: Any, out: Any = None, stream: _Stream = None) -> Any: ...
    @property
    def library(self) -> Union[Library, CudaModule]: ...
    @property
    def launch_data(self) -> Optional[Dict[str, Any]]: ...
    @property
    def arity(self) -> int: ...
    @property
    def dtype(self) -> str: ...
    @property
    def device(self) -> str: ...

class Reduce:
    """A compiled reduce kernel: ``r(x, out=None)``."""

    def __call__(self, x: Any, out: Any = None, stream: _Stream = None) -> Any: ...
    @property
    def library(self) -> Union[Library, CudaModule]: ...
    @property
    def launch_data(self) -> Optional[Dict[str, Any]]: ...
    @property
    def axis(self) -> int: ...
    @property
    def dtype(self) -> str: ...

class Gemm:
    """A compiled gemm kernel: ``g(a, b, bias=None, out=None)``."""

    def __call__(
        self,
        a: Any,
        b: Any,
        bias: Any = None,
        out: Any = None,
        stream: _Stream = None,
    ) -> Any: ...
    @property
    def library(self) -> Union[Library, CudaModule]: ...
    @property
    def launch_data(self) -> Optional[Dict[str, Any]]: ...
    @property
    def dtype(self) -> str: ...

class Cache:
    """The cache and compile service."""

    def __init__(
        self,
        base_dir: Optional[_Path] = None,
        *,
        runtime_tag: Optional[str] = None,
        flags: Union[Dict[str, Any], str, None] = None,
        lock_timeout: Optional[float] = None,
        _settings_of: Optional[Cache] = None,
    ) -> None: ...
    @property
    def base_dir(self) -> str: ...
    @property
    def compiledir(self) -> str: ...
    @property
    def runtime_tag(self) -> str: ...
    @property
    def lock_timeout(self) -> Optional[float]: ...
    def compile(
        self,
        source: _Text,
        *,
        lang: str = "c",
        flags: Optional[Sequence[str]] = None,
        name: Optional[str] = None,
        include_dirs: Optional[Sequence[_Path]] = None,
        headers: Optional[_Headers] = None,
    ) -> Library: ...
    def template(
        self,
        name: str,
        params: Optional[Dict[str, Any]] = None,
        *,
        flags: Optional[Sequence[str]] = None,
    ) -> Library: ...
    def render(self, name: str, params: Optional[Dict[str, Any]] = None) -> str: ...
    def elemwise(
        self,
        expr: str,
        arity: Optional[int] = None,
        *,
        dtype: str = "float32",
        device: str = "cpu",
    ) -> Elemwise: ...
    def reduce(
        self,
        op: str = "sum",
        pre: str = "x",
        *,
        axis: int = 1,
        dtype: str = "float32",
        device: str = "cpu",
    ) -> Reduce: ...
    def gemm(
        self,
        *,
        dtype: str = "float32",
        relu: bool = False,
        device: str = "cpu",
        precision: Optional[str] = None,
    ) -> Gemm: ...
    def cuda_module(
        self,
        source: _Text,
        *,
        options: Optional[Sequence[str]] = None,
        name: Optional[str] = None,
        include_dirs: Optional[Sequence[_Path]] = None,
        headers: Optional[_Headers] = None,
    ) -> CudaModule: ...
    def get_group(self, producer: str, material: str, name: str = "") -> Optional[Group]: ...
    def lease_group(
        self, producer: str, material: str, name: str = ""
    ) -> Union[Group, GroupLease]: ...
    def put_group(
        self,
        producer: str,
        material: str,
        files: Mapping[str, Union[bytes, str]],
        name: str = "",
    ) -> Group: ...
    def _list_json(self, all: bool = False, sort: str = "name") -> str: ...
    def _stats_json(self, zero: bool = False) -> str: ...
    def _prune_json(
        self,
        max_size: Union[str, int, None] = None,
        older_than: Any = None,
        stale: bool = False,
        dry_run: bool = False,
    ) -> str: ...
    def _clear_json(self, force: bool = False, dry_run: bool = False) -> str: ...

def cli_main(argv: List[str]) -> int: ...
def version() -> str: ...
def cpu_name() -> str: ...
