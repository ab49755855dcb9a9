# sensorcity: frozen into the QEMU firmware: asyncio (its C core is enabled in mpconfigport.h)
# and _boot.py, which mounts the RAM filesystem.
include("$(MPY_DIR)/extmod/asyncio")
freeze("$(PORT_DIR)/sensorcity", "_boot.py")
