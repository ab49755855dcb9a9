// sensorcity: board support for QEMU's mps2-an385.
//
// - SysTick interrupts every millisecond; microseconds are that count plus the current SysTick
//   value, kept in 64 bits so the 2^30 masks of the time module wrap as on a real board.
// - The CMSDK UARTs hold one received byte; an RX interrupt moves it into a ring so that nothing
//   is lost while Python runs, stdin and machine.UART(1) become pollable, and WFI can idle the CPU.
//   When a ring is full the interrupt is masked and QEMU holds the line back (no byte is dropped).
// - Boot arguments come from the semihosting command line (qemu -semihosting-config arg=...):
//   "ticks_us=N" starts the microsecond clock at N (to test the 2^30 wrap without waiting days),
//   "heap=N" sets the GC heap size in bytes (a board's free heap, not the 4 MB of the emulator).

#include <string.h>
#include <stdlib.h>

#include "py/runtime.h"
#include "py/mphal.h"
#include "shared/runtime/interrupt_char.h"
#include "mps2.h"

#define SYSCLK_HZ (25000000)
#define SYSTICK_RELOAD (SYSCLK_HZ / 1000 - 1)

#define SYST_CSR (*(volatile uint32_t *)0xe000e010)
#define SYST_RVR (*(volatile uint32_t *)0xe000e014)
#define SYST_CVR (*(volatile uint32_t *)0xe000e018)
#define NVIC_ISER0 (*(volatile uint32_t *)0xe000e100)

typedef struct _cmsdk_uart_t {
    volatile uint32_t DATA;
    volatile uint32_t STATE;
    volatile uint32_t CTRL;
    volatile uint32_t INTSTATUS;
    volatile uint32_t BAUDDIV;
} cmsdk_uart_t;

#define UART_STATE_TXFULL (1 << 0)
#define UART_STATE_RXFULL (1 << 1)
#define UART_CTRL_TX_EN (1 << 0)
#define UART_CTRL_RX_EN (1 << 1)
#define UART_CTRL_RX_INTEN (1 << 3)
#define UART_INT_RX (1 << 1)

// Ring sizes are powers of two; the sensor line gets more room for bursts of samples.
#define RING0_SIZE (1024)
#define RING1_SIZE (8192)

typedef struct _rx_ring_t {
    cmsdk_uart_t *regs;
    uint8_t *buf;
    uint32_t mask;
    volatile uint32_t head; // written by the interrupt
    volatile uint32_t tail; // written by the reader
} rx_ring_t;

static uint8_t ring0_buf[RING0_SIZE];
static uint8_t ring1_buf[RING1_SIZE];
static rx_ring_t rings[MPS2_NUM_UARTS] = {
    { (cmsdk_uart_t *)0x40004000, ring0_buf, RING0_SIZE - 1, 0, 0 },
    { (cmsdk_uart_t *)0x40005000, ring1_buf, RING1_SIZE - 1, 0, 0 },
};
// NVIC line of each UART's RX interrupt on the AN385.
static const uint8_t rx_irq[MPS2_NUM_UARTS] = { 0, 2 };

static volatile uint64_t systick_us; // microseconds at the last SysTick interrupt
static uint64_t boot_us;
static uint32_t heap_arg;

// Move received bytes into the ring; runs in the RX interrupt and, with interrupts off, from the
// reader when it has made room in a ring that had masked its interrupt.
// The interrupt flag is cleared before reading: a byte that QEMU delivers after the last look at
// RXFULL sets it again, so its interrupt is not lost (QEMU's main loop runs beside the CPU).
static void uart_drain(int n) {
    rx_ring_t *r = &rings[n];
    r->regs->INTSTATUS = UART_INT_RX;
    while (r->regs->STATE & UART_STATE_RXFULL) {
        if (r->head - r->tail > r->mask) {
            r->regs->CTRL &= ~UART_CTRL_RX_INTEN;
            break;
        }
        int c = r->regs->DATA;
        if (n == 0 && c == mp_interrupt_char) {
            mp_sched_keyboard_interrupt();
            continue;
        }
        r->buf[r->head & r->mask] = c;
        r->head = r->head + 1;
    }
}

void SysTick_Handler(void) {
    systick_us = systick_us + 1000;
}

void UART0RX_Handler(void) {
    uart_drain(0);
}

void UART1RX_Handler(void) {
    uart_drain(1);
}

uint64_t mps2_time_us(void) {
    uint64_t base;
    uint32_t val;
    do {
        base = systick_us;
        val = SYST_CVR;
    } while (base != systick_us);
    return base + (SYSTICK_RELOAD - val) / (SYSCLK_HZ / 1000000);
}

uint64_t mps2_boot_us(void) {
    return boot_us;
}

// Without a heap= argument the heap is that of the stock port, about what an ESP32 leaves free.
#define DEFAULT_HEAP_BYTES (143360)

uint32_t mps2_heap_bytes(uint32_t max_bytes) {
    uint32_t n = heap_arg ? heap_arg : DEFAULT_HEAP_BYTES;
    return (n > max_bytes ? max_bytes : n) & ~7u;
}

size_t mps2_uart_rx_any(int n) {
    return rings[n].head - rings[n].tail;
}

int mps2_uart_rx_chr(int n) {
    rx_ring_t *r = &rings[n];
    if (r->head == r->tail) {
        return -1;
    }
    int c = r->buf[r->tail & r->mask];
    r->tail = r->tail + 1;
    if (!(r->regs->CTRL & UART_CTRL_RX_INTEN)) {
        // Unmask first, then take the byte that waited: one arriving in between raises the
        // interrupt, which runs after cpsie.
        __asm volatile ("cpsid i");
        r->regs->CTRL |= UART_CTRL_RX_INTEN;
        uart_drain(n);
        __asm volatile ("cpsie i");
    }
    return c;
}

void mps2_uart_tx_strn(int n, const char *buf, size_t len) {
    cmsdk_uart_t *u = rings[n].regs;
    for (size_t i = 0; i < len; ++i) {
        while (u->STATE & UART_STATE_TXFULL) {
        }
        u->DATA = buf[i];
    }
}

// ARM semihosting SYS_GET_CMDLINE: fills buf with the arguments QEMU was given.
static int semihosting_cmdline(char *buf, uint32_t size) {
    uint32_t args[2] = { (uint32_t)buf, size };
    register uint32_t r0 __asm__ ("r0") = 0x15;
    register uint32_t r1 __asm__ ("r1") = (uint32_t)args;
    __asm volatile ("bkpt 0xab" : "+r" (r0) : "r" (r1) : "memory");
    if (r0 != 0) {
        return 0;
    }
    buf[args[1] < size ? args[1] : size - 1] = 0;
    return args[1];
}

static uint64_t parse_u64(const char *s) {
    uint64_t v = 0;
    while (*s >= '0' && *s <= '9') {
        v = v * 10 + (*s++ - '0');
    }
    return v;
}

static void parse_boot_args(void) {
    static char cmdline[256];
    if (semihosting_cmdline(cmdline, sizeof(cmdline)) <= 0) {
        return;
    }
    for (char *tok = cmdline; tok != NULL && *tok; tok = strchr(tok, ' ')) {
        while (*tok == ' ') {
            ++tok;
        }
        if (strncmp(tok, "ticks_us=", 9) == 0) {
            boot_us = parse_u64(tok + 9);
        } else if (strncmp(tok, "heap=", 5) == 0) {
            heap_arg = parse_u64(tok + 5);
        }
    }
}

void mps2_init(void) {
    parse_boot_args();
    systick_us = boot_us;
    SYST_RVR = SYSTICK_RELOAD;
    SYST_CVR = 0;
    SYST_CSR = 7; // processor clock, interrupt, enable
    for (int n = 0; n < MPS2_NUM_UARTS; ++n) {
        rings[n].regs->BAUDDIV = 16;
        rings[n].regs->CTRL = UART_CTRL_TX_EN | UART_CTRL_RX_EN | UART_CTRL_RX_INTEN;
        NVIC_ISER0 = 1 << rx_irq[n];
    }
}
