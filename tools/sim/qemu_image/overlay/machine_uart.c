// sensorcity: machine.UART for QEMU's mps2-an385, included by extmod/machine_uart.c.
// UART(1) is the second CMSDK UART (the sensor line on the second pty). The emulator has no baud
// rate, so baudrate/bits/parity/stop are accepted and reported only, as a board's driver would
// take them. Reads wait up to `timeout` ms for the first byte and return what has arrived.

#include "py/mphal.h"
#include "py/stream.h"
#include "mps2.h"

#define MICROPY_PY_MACHINE_UART_CLASS_CONSTANTS

typedef struct _machine_uart_obj_t {
    mp_obj_base_t base;
    uint8_t id;
    uint32_t baudrate;
    uint32_t timeout;
} machine_uart_obj_t;

static machine_uart_obj_t machine_uart_obj[MPS2_NUM_UARTS];

static void mp_machine_uart_print(const mp_print_t *print, mp_obj_t self_in, mp_print_kind_t kind) {
    machine_uart_obj_t *self = MP_OBJ_TO_PTR(self_in);
    mp_printf(print, "UART(%u, baudrate=%u, timeout=%u)", self->id, self->baudrate, self->timeout);
}

static void mp_machine_uart_init_helper(machine_uart_obj_t *self, size_t n_args, const mp_obj_t *pos_args, mp_map_t *kw_args) {
    enum { ARG_baudrate, ARG_bits, ARG_parity, ARG_stop, ARG_timeout, ARG_timeout_char, ARG_rxbuf, ARG_tx, ARG_rx };
    static const mp_arg_t allowed_args[] = {
        { MP_QSTR_baudrate, MP_ARG_INT, {.u_int = -1} },
        { MP_QSTR_bits, MP_ARG_KW_ONLY | MP_ARG_INT, {.u_int = 8} },
        { MP_QSTR_parity, MP_ARG_KW_ONLY | MP_ARG_OBJ, {.u_rom_obj = MP_ROM_NONE} },
        { MP_QSTR_stop, MP_ARG_KW_ONLY | MP_ARG_INT, {.u_int = 1} },
        { MP_QSTR_timeout, MP_ARG_KW_ONLY | MP_ARG_INT, {.u_int = -1} },
        { MP_QSTR_timeout_char, MP_ARG_KW_ONLY | MP_ARG_INT, {.u_int = 0} },
        { MP_QSTR_rxbuf, MP_ARG_KW_ONLY | MP_ARG_INT, {.u_int = 0} },
        { MP_QSTR_tx, MP_ARG_KW_ONLY | MP_ARG_OBJ, {.u_rom_obj = MP_ROM_NONE} },
        { MP_QSTR_rx, MP_ARG_KW_ONLY | MP_ARG_OBJ, {.u_rom_obj = MP_ROM_NONE} },
    };
    mp_arg_val_t args[MP_ARRAY_SIZE(allowed_args)];
    mp_arg_parse_all(n_args, pos_args, kw_args, MP_ARRAY_SIZE(allowed_args), allowed_args, args);
    if (args[ARG_baudrate].u_int > 0) {
        self->baudrate = args[ARG_baudrate].u_int;
    }
    if (args[ARG_timeout].u_int >= 0) {
        self->timeout = args[ARG_timeout].u_int;
    }
}

static mp_obj_t mp_machine_uart_make_new(const mp_obj_type_t *type, size_t n_args, size_t n_kw, const mp_obj_t *args) {
    mp_arg_check_num(n_args, n_kw, 1, MP_OBJ_FUN_ARGS_MAX, true);
    mp_int_t id = mp_obj_get_int(args[0]);
    if (id != 1) {
        // UART(0) carries the REPL and sys.stdin/stdout, as on an ESP32.
        mp_raise_msg_varg(&mp_type_ValueError, MP_ERROR_TEXT("UART(%d) doesn't exist"), id);
    }
    machine_uart_obj_t *self = &machine_uart_obj[id];
    if (self->base.type == NULL) {
        self->base.type = &machine_uart_type;
        self->id = id;
        self->baudrate = 115200;
    }
    mp_map_t kw_args;
    mp_map_init_fixed_table(&kw_args, n_kw, args + n_args);
    mp_machine_uart_init_helper(self, n_args - 1, args + 1, &kw_args);
    return MP_OBJ_FROM_PTR(self);
}

static void mp_machine_uart_deinit(machine_uart_obj_t *self) {
}

static mp_int_t mp_machine_uart_any(machine_uart_obj_t *self) {
    return mps2_uart_rx_any(self->id);
}

static bool mp_machine_uart_txdone(machine_uart_obj_t *self) {
    return true;
}

static mp_uint_t mp_machine_uart_read(mp_obj_t self_in, void *buf_in, mp_uint_t size, int *errcode) {
    machine_uart_obj_t *self = MP_OBJ_TO_PTR(self_in);
    uint8_t *buf = buf_in;
    if (size == 0) {
        return 0;
    }
    mp_uint_t start = mp_hal_ticks_ms();
    while (mps2_uart_rx_any(self->id) == 0) {
        mp_uint_t waited = mp_hal_ticks_ms() - start;
        if (waited >= self->timeout) {
            *errcode = MP_EAGAIN;
            return MP_STREAM_ERROR;
        }
        mp_event_wait_ms(self->timeout - waited);
    }
    mp_uint_t n = 0;
    int c;
    while (n < size && (c = mps2_uart_rx_chr(self->id)) >= 0) {
        buf[n++] = c;
    }
    return n;
}

static mp_uint_t mp_machine_uart_write(mp_obj_t self_in, const void *buf_in, mp_uint_t size, int *errcode) {
    machine_uart_obj_t *self = MP_OBJ_TO_PTR(self_in);
    mps2_uart_tx_strn(self->id, buf_in, size);
    return size;
}

static mp_uint_t mp_machine_uart_ioctl(mp_obj_t self_in, mp_uint_t request, uintptr_t arg, int *errcode) {
    machine_uart_obj_t *self = MP_OBJ_TO_PTR(self_in);
    if (request == MP_STREAM_POLL) {
        mp_uint_t ret = arg & MP_STREAM_POLL_WR;
        if ((arg & MP_STREAM_POLL_RD) && mps2_uart_rx_any(self->id) > 0) {
            ret |= MP_STREAM_POLL_RD;
        }
        return ret;
    } else if (request == MP_STREAM_FLUSH) {
        return 0;
    }
    *errcode = MP_EINVAL;
    return MP_STREAM_ERROR;
}
