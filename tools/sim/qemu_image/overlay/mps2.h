// sensorcity: board support for QEMU's mps2-an385 (time base, UART receive rings, boot arguments).
#ifndef MICROPY_INCLUDED_QEMU_MPS2_H
#define MICROPY_INCLUDED_QEMU_MPS2_H

#include <stdint.h>
#include <stddef.h>

#define MPS2_NUM_UARTS (2)

void mps2_init(void);
uint64_t mps2_time_us(void);
uint64_t mps2_boot_us(void);
uint32_t mps2_heap_bytes(uint32_t max_bytes);

// Received bytes waiting in the ring of UART n (0 is stdio, 1 the sensor line).
size_t mps2_uart_rx_any(int n);
// Next received byte of UART n, or -1 if none.
int mps2_uart_rx_chr(int n);
void mps2_uart_tx_strn(int n, const char *buf, size_t len);

#endif
