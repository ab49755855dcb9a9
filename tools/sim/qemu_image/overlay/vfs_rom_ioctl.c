// sensorcity: the board's romfs partition, as an ESP32 build with a "romfs" partition has one:
// 1 MiB at 0x21200000, 2 MiB into the PSRAM that QEMU backs with the host's flash file (see
// _boot.py). With vfs.rom_ioctl the core mounts a ROMFS found there at /rom at each boot (and
// puts /rom and /rom/lib on sys.path), and `mpremote romfs deploy` can write one over the REPL.
//
//   rom_ioctl(1)                     -> 1 segment
//   rom_ioctl(2, 0)                  -> a memoryview of the partition
//   rom_ioctl(3, 0, len)             -> erase the first len bytes (whole 4 KiB sectors) to 0xff;
//   rom_ioctl(3, 0, offset, len)        returns the smallest write the partition takes
//   rom_ioctl(4, 0, offset, buf)     -> write buf at offset, 0
//   rom_ioctl(5, 0)                  -> writing is over, 0
// Anything else, a segment other than 0, or a range outside the partition: -EINVAL.

#include <string.h>

#include "py/mperrno.h"
#include "py/objarray.h"
#include "py/runtime.h"
#include "extmod/vfs.h"

#if MICROPY_VFS_ROM_IOCTL

#define ROMFS_BASE (0x21200000)
#define ROMFS_BYTES (0x100000)
#define ROMFS_SECTOR (4096)
#define ROMFS_MIN_WRITE (4)

static const MP_DEFINE_MEMORYVIEW_OBJ(romfs_partition, 'B', 0, ROMFS_BYTES, (void *)ROMFS_BASE);

static bool romfs_range(mp_int_t offset, mp_int_t len) {
    return offset >= 0 && len >= 0 && offset <= ROMFS_BYTES && len <= ROMFS_BYTES - offset;
}

mp_obj_t mp_vfs_rom_ioctl(size_t n_args, const mp_obj_t *args) {
    mp_int_t cmd = mp_obj_get_int(args[0]);
    if (cmd == MP_VFS_ROM_IOCTL_GET_NUMBER_OF_SEGMENTS) {
        return MP_OBJ_NEW_SMALL_INT(1);
    }
    if (n_args < 2 || mp_obj_get_int(args[1]) != 0) {
        return MP_OBJ_NEW_SMALL_INT(-MP_EINVAL);
    }
    uint8_t *base = (uint8_t *)ROMFS_BASE;
    switch (cmd) {
        case MP_VFS_ROM_IOCTL_GET_SEGMENT:
            return MP_OBJ_FROM_PTR(&romfs_partition);

        case MP_VFS_ROM_IOCTL_WRITE_PREPARE: {
            if (n_args < 3) {
                return MP_OBJ_NEW_SMALL_INT(-MP_EINVAL);
            }
            mp_int_t offset = n_args >= 4 ? mp_obj_get_int(args[2]) : 0;
            mp_int_t len = mp_obj_get_int(args[n_args >= 4 ? 3 : 2]);
            // a flash chip erases whole sectors
            mp_int_t start = offset / ROMFS_SECTOR * ROMFS_SECTOR;
            mp_int_t end = (offset + len + ROMFS_SECTOR - 1) / ROMFS_SECTOR * ROMFS_SECTOR;
            if (!romfs_range(offset, len) || end > ROMFS_BYTES) {
                return MP_OBJ_NEW_SMALL_INT(-MP_EINVAL);
            }
            memset(base + start, 0xff, end - start);
            return MP_OBJ_NEW_SMALL_INT(ROMFS_MIN_WRITE);
        }

        case MP_VFS_ROM_IOCTL_WRITE: {
            if (n_args < 4) {
                return MP_OBJ_NEW_SMALL_INT(-MP_EINVAL);
            }
            mp_int_t offset = mp_obj_get_int(args[2]);
            mp_buffer_info_t bufinfo;
            mp_get_buffer_raise(args[3], &bufinfo, MP_BUFFER_READ);
            if (!romfs_range(offset, bufinfo.len)) {
                return MP_OBJ_NEW_SMALL_INT(-MP_EINVAL);
            }
            memcpy(base + offset, bufinfo.buf, bufinfo.len);
            return MP_OBJ_NEW_SMALL_INT(0);
        }

        case MP_VFS_ROM_IOCTL_WRITE_COMPLETE:
            return MP_OBJ_NEW_SMALL_INT(0);

        default:
            return MP_OBJ_NEW_SMALL_INT(-MP_EINVAL);
    }
}

#endif // MICROPY_VFS_ROM_IOCTL
