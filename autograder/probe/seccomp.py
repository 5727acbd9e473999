"""A seccomp filter every jail runs under: the kernel's key management system calls are denied.

A slot uid's keyrings belong to the uid, not to one jail: a key a submission added to its user keyring
(``add_key``, ``keyctl``) would be there for the next submission leased the same uid, in bubblewrap (as
root, where the slot uid is a real uid) and in the permission jail alike.  Notebooks have no use for
keyrings, so ``add_key``, ``request_key`` and ``keyctl`` fail with ``EPERM`` in every jail, for every
process in it: the filter is installed between fork and exec of the jail's first program and is kept
across ``execve``, ``fork`` and uid changes, and no process can remove it.

The filter is a classic BPF program, built here for the architectures whose system call numbers it
knows (:data:`KEY_SYSCALLS`): the native ones and, on a 64-bit kernel, the 32-bit compatibility ones (and
x86's x32 ABI, which is denied whole); a call made under any other architecture is denied too.  On a
machine of another architecture :func:`supported` is False: the jail's notes then say that key system
calls are not filtered.
"""

from __future__ import annotations

import ctypes
import errno
import platform
import struct

# audit architecture -> (add_key, request_key, keyctl): from the kernel's syscall tables
AUDIT_ARCH_X86_64, AUDIT_ARCH_I386 = 0xC000003E, 0x40000003
AUDIT_ARCH_AARCH64, AUDIT_ARCH_ARM = 0xC00000B7, 0x40000028
KEY_SYSCALLS = {
    "x86_64": {AUDIT_ARCH_X86_64: (248, 249, 250), AUDIT_ARCH_I386: (286, 287, 288)},
    "aarch64": {AUDIT_ARCH_AARCH64: (217, 218, 219), AUDIT_ARCH_ARM: (309, 310, 311)},
}
X32_SYSCALL_BIT = 0x40000000  # x86_64: a system call number with this bit is the x32 ABI's

NOT_FILTERED_NOTE = "key system calls not filtered (no seccomp filter for this architecture)"
FILTERED_NOTE = "key management system calls (add_key, request_key, keyctl) denied by a seccomp filter"

# BPF
_LD_W_ABS, _JEQ_K, _JGE_K, _RET_K = 0x20, 0x15, 0x35, 0x06
_SECCOMP_RET_ALLOW, _SECCOMP_RET_ERRNO = 0x7FFF0000, 0x00050000
_OFFSET_NR, _OFFSET_ARCH = 0, 4  # struct seccomp_data
_PR_SET_NO_NEW_PRIVS, _PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 38, 22, 2


def machine() -> str:
    return platform.machine().lower()


def supported() -> bool:
    return machine() in KEY_SYSCALLS


def key_syscall_numbers() -> tuple[int, int, int] | None:
    """(add_key, request_key, keyctl) of this machine's native architecture, or None if unknown."""
    tables = KEY_SYSCALLS.get(machine())
    return next(iter(tables.values())) if tables else None


def program(denied_errno: int = errno.EPERM) -> list[tuple[int, int, int, int]]:
    """The filter, as ``(code, jt, jf, k)`` instructions."""
    deny = _SECCOMP_RET_ERRNO | denied_errno
    tables = KEY_SYSCALLS[machine()]
    blocks: list[list] = []  # per architecture: its checks, each jump given as a label resolved below
    for arch, numbers in tables.items():
        block = [("ld", _OFFSET_ARCH), ("jne", arch, "next"), ("ld", _OFFSET_NR)]
        if arch == AUDIT_ARCH_X86_64:
            block.append(("jge", X32_SYSCALL_BIT, "deny"))
        block += [("jeq", n, "deny") for n in numbers]
        block.append(("ret", _SECCOMP_RET_ALLOW))
        blocks.append(block)
    tail = [("ret", deny)]  # an architecture not listed, and every denied call, end here
    flat: list = []
    starts = []
    for block in blocks:
        starts.append(len(flat))
        flat += block
    deny_at = len(flat)
    flat += tail
    out = []
    for i, ins in enumerate(flat):
        block_end = next((s for s in starts if s > i), deny_at)  # where "next" (the next architecture) starts
        if ins[0] == "ld":
            out.append((_LD_W_ABS, 0, 0, ins[1]))
        elif ins[0] == "ret":
            out.append((_RET_K, 0, 0, ins[1]))
        else:
            target = deny_at if ins[2] == "deny" else block_end
            offset = target - i - 1
            if not 0 <= offset < 256:
                raise ValueError("seccomp program too long for a BPF jump")
            if ins[0] == "jne":  # jump when not equal: the false branch
                out.append((_JEQ_K, 0, offset, ins[1]))
            else:
                out.append((_JEQ_K if ins[0] == "jeq" else _JGE_K, offset, 0, ins[1]))
    return out


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def installer(no_new_privs: bool):
    """A function for a child between fork and exec (a ``preexec_fn``) that installs the filter on itself;
    everything it runs inherits it.  Built here, in the parent: the child only makes two ``prctl`` calls.
    ``no_new_privs``: set it first (required where the process lacks ``CAP_SYS_ADMIN``: a non-root grader).
    Raises ``OSError`` in the child if the kernel refuses (the child then never runs its program)."""
    instructions = program()
    raw = b"".join(struct.pack("HBBI", *ins) for ins in instructions)
    buffer = ctypes.create_string_buffer(raw, len(raw))
    fprog = _SockFprog(len(instructions), ctypes.addressof(buffer))
    libc = ctypes.CDLL(None, use_errno=True)

    def install() -> None:
        _keep = buffer  # noqa: F841 - alive as long as the function
        if no_new_privs and libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
        if libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "the seccomp filter could not be installed")

    return install
