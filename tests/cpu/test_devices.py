"""vmkit.cpu.devices: the 16550 UART's registers behind COM1's eight ports."""

import pytest

from vmkit.cpu.devices import Devices, UART16550


@pytest.mark.parametrize("offset, out, in_", [
    (0, "THR", "RBR"), (1, "IER", "IER"), (2, "FCR", "IIR"), (3, "LCR", "LCR"),
    (4, "MCR", "MCR"), (5, "LSR", "LSR"), (6, "MSR", "MSR"), (7, "SCR", "SCR"),
])
def test_registers_by_offset_and_direction(offset, out, in_):
    """Each port names the data sheet's register, which may differ for reads and writes."""
    uart = UART16550()
    assert (uart.register(0x3F8 + offset, "out"), uart.register(0x3F8 + offset, "in")) == (out, in_)


def test_dlab_turns_the_first_two_ports_into_the_divisor_latch():
    """With LCR.DLAB set, offsets 0 and 1 are DLL and DLM; the divisor sets the baud rate."""
    uart = UART16550()
    uart.write(0x3FB, 0x80)
    uart.write(0x3F8, 0x01)
    uart.write(0x3F9, 0x00)
    assert uart.register(0x3F8, "out") == "DLL" and uart.baud == 115_200 and not uart.sent


def test_divisor_is_readable_back_through_the_latch():
    """DLL and DLM read back the divisor while DLAB is set."""
    uart = UART16550()
    uart.write(0x3FB, 0x80)
    uart.write(0x3F8, 0x34)
    uart.write(0x3F9, 0x12)
    assert (uart.read(0x3F8), uart.read(0x3F9)) == (0x34, 0x12)


def test_reset_divisor_is_the_bios_9600_baud():
    """Before any set-up the divisor is 12: 9600 baud."""
    assert UART16550().baud == 9600


def test_line_status_always_says_the_transmitter_is_empty():
    """LSR reads THRE and TEMT set, DR clear: every byte leaves at once, none arrives."""
    assert UART16550().read(0x3FD) == 0x60


def test_iir_reports_fifos_once_enabled():
    """IIR bits 7:6 say FIFOs are on after FCR bit 0; bit 0 says no interrupt is pending."""
    uart = UART16550()
    before = uart.read(0x3FA)
    uart.write(0x3FA, 0xC7)
    assert (before, uart.read(0x3FA)) == (0x01, 0xC1)


def test_writing_thr_transmits_with_dlab_clear():
    """A write to THR sends the byte; the same port with DLAB set does not."""
    uart = UART16550()
    uart.write(0x3F8, ord("A"))
    uart.write(0x3FB, 0x80)
    uart.write(0x3F8, ord("B"))
    assert bytes(uart.sent) == b"A"


def test_write_to_a_read_only_register_is_ignored():
    """LSR is read-only: writing it changes nothing."""
    uart = UART16550()
    assert "ignored" in uart.write(0x3FD, 0) and uart.read(0x3FD) == 0x60


def test_devices_route_com1_ports_to_the_uart_and_others_read_ff():
    """Devices answers COM1's ports from the UART; a port with no device reads 0xFF."""
    devices = Devices()
    devices.out(0x3F8, ord("z"))
    assert devices.text == "z" and devices.in_(0x3FD) == 0x60 and devices.in_(0x2F8) == 0xFF


def test_uart_logs_the_register_of_each_access():
    """The access log names registers as they were at the time, DLAB included."""
    uart = UART16550()
    for port, value in ((0x3FB, 0x80), (0x3F8, 1), (0x3FB, 0x03), (0x3F8, 65)):
        uart.write(port, value)
    uart.read(0x3FD)
    assert uart.accesses == ["LCR", "DLL", "LCR", "THR", "LSR"]


@pytest.mark.parametrize("port", [0x3FD, 0x3FE])
def test_writes_to_lsr_and_msr_reach_the_uart_and_are_ignored(port):
    """LSR and MSR belong to the UART even for writes; the write changes nothing."""
    devices = Devices()
    assert "ignored" in devices.out(port, 0) and devices.uart.accesses == [("LSR", "MSR")[port - 0x3FD]]
    assert devices.in_(0x3FD) == 0x60


@pytest.mark.parametrize("call", [
    lambda u: u.write(0x80, 1), lambda u: u.read(0x2F8), lambda u: u.write(0x3F8, "A"),
    lambda u: u.register("0x3f8", "out"), lambda u: u.register(0x3FD, "OUT"),
])
def test_bad_access_is_refused_and_not_logged(call):
    """A port outside the UART, a value or port of the wrong type, or a bad direction: VmkitError."""
    from vmkit.core import VmkitError
    uart = UART16550()
    with pytest.raises(VmkitError):
        call(uart)
    assert uart.accesses == []


def test_fcr_bits_are_kept_only_with_fifos_enabled():
    """Writing FCR with bit 0 clear disables the FIFOs: the other bits are not programmed."""
    uart = UART16550()
    uart.write(0x3FA, 0xC8)
    assert uart.fcr == 0 and uart.read(0x3FA) == 0x01


def test_mcr_upper_bits_read_zero():
    """MCR bits 7:5 do not exist on a 16550A: they read back 0."""
    uart = UART16550()
    uart.write(0x3FC, 0xFF)
    assert uart.read(0x3FC) == 0x1F
