"""vmkit.io.emulated: the console as a fully emulated device under the chapter-1 hypervisor."""

import pytest

from vmkit.core import VmkitError
from vmkit.cpu.hypervisor import Hypervisor, HypervisorConfig
from vmkit.cpu.kernel import UART_INIT, GuestKernel
from vmkit.cpu.programs import hello
from vmkit.io.emulated import console_run, decode_io_exits

KERNEL_MESSAGE = len("kernel: all done, halt\n")


@pytest.fixture(scope="module")
def runs():
    return {c: console_run(1024, c) for c in ("plain", "16550")}


def test_every_byte_reaches_the_uart(runs):
    """Both drivers send the program's KiB and the kernel's last message."""
    assert runs["plain"].sent == runs["16550"].sent == 1024 + KERNEL_MESSAGE


def test_blind_driver_costs_one_exit_per_byte(runs):
    """Writing THR without polling: one OUT, hence one exit 30, per byte: 1,024 per KiB."""
    assert runs["plain"].by_register() == {"OUT THR": runs["plain"].sent}
    assert runs["plain"].exits_per_kib == 1024


def test_polling_driver_costs_two_exits_per_byte_plus_set_up(runs):
    """An IN of LSR and an OUT of THR per byte, and the seven set-up OUTs once."""
    run = runs["16550"]
    counts = run.by_register()
    assert counts["IN LSR"] == counts["OUT THR"] == run.sent
    assert run.uart_exits == 2 * run.sent + len(UART_INIT)


def test_set_up_writes_the_divisor_through_dlab(runs):
    """The boot sequence reaches DLL and DLM, not THR and IER, while LCR.DLAB is set."""
    first = [e.register for e in runs["16550"].exits[:len(UART_INIT)]]
    assert first == ["IER", "LCR", "DLL", "DLM", "LCR", "FCR", "MCR"]


def test_qualification_decodes_to_the_accessed_port(runs):
    """Each exit's qualification names DX's port, one byte, no string, no REP."""
    lsr = next(e for e in runs["16550"].exits if e.register == "LSR")
    assert (lsr.port, lsr.direction, lsr.size, lsr.string, lsr.rep, lsr.immediate) == (
        0x3FD, "in", 1, False, False, False)
    assert lsr.qualification == 0x3FD << 16 | 1 << 3


def test_pit_exits_are_not_counted_as_uart_exits(runs):
    """The timer's set-up OUTs exit too, but reach no UART register."""
    assert any(e.register is None and e.port == 0x43 for e in runs["plain"].exits)


def test_polling_driver_boots_the_uart_at_115200_baud():
    """After boot the guest's set-up left divisor 1: 115,200 baud, 8N1."""
    hv = Hypervisor(HypervisorConfig())
    vm = hv.create_vm("vm", GuestKernel((hello(text="hi"),), console="16550"))
    hv.run(200_000)
    assert (vm.guest.devices.uart.baud, vm.guest.devices.uart.lcr) == (115_200, 0x03)


def test_register_names_need_every_access_to_exit():
    """With an I/O bitmap some accesses do not exit; decoding register names is refused."""
    hv = Hypervisor(HypervisorConfig(io_exiting="bitmap"))
    hv.create_vm("vm", GuestKernel((hello(text="hi"),), console="16550"))
    hv.run(200_000)
    with pytest.raises(VmkitError, match="unconditional"):
        decode_io_exits(hv, "vm")


@pytest.mark.parametrize("nbytes", [0, 16 * 1024 + 1, "1024"])
def test_payload_size_is_checked(nbytes):
    """A payload of 1 B to 16 KiB is accepted; anything else gets a clear error."""
    with pytest.raises(VmkitError):
        console_run(nbytes)


def test_unknown_console_driver_is_refused():
    """GuestKernel(console=...) accepts 'plain' or '16550' only."""
    with pytest.raises(VmkitError, match="16550"):
        GuestKernel((hello(),), console="8250")


def test_run_that_cannot_finish_is_refused():
    """An exit cost near the timer period starves the guest: a clear error, not partial counts."""
    with pytest.raises(VmkitError, match="did not finish"):
        console_run(16, exit_cost=10_000)


def test_exits_per_kib_of_an_empty_run_is_an_error():
    """No byte sent: exits per KiB is undefined and says so."""
    from vmkit.io.emulated import ConsoleRun
    with pytest.raises(VmkitError):
        ConsoleRun("16550", 0, (), 1000).exits_per_kib
