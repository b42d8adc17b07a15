//go:build unix

package spool

import (
	"fmt"
	"os"
	"syscall"
)

// private fails unless dir is a directory of this process's user that its
// group and others cannot write: anyone else who can write there can put
// files into it or take them away.
func private(dir string) error {
	info, err := os.Stat(dir)
	if err != nil {
		return err
	}
	if !info.IsDir() {
		return fmt.Errorf("not a directory")
	}
	if st, ok := info.Sys().(*syscall.Stat_t); ok && int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("owned by uid %d, not by the gateway's uid %d: that user could plant or remove spooled events; "+
			"point GATEWAY_SPOOL_DIR at a folder the gateway creates itself (a subfolder of the volume), or chown it", st.Uid, os.Geteuid())
	}
	if perm := info.Mode().Perm(); perm&0o022 != 0 {
		return fmt.Errorf("mode %04o lets its group or others write: they could plant or remove spooled events; "+
			"chmod 700 it, or point GATEWAY_SPOOL_DIR at a subfolder the gateway creates (mode 0700)", perm)
	}
	return nil
}
