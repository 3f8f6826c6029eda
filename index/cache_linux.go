package index

import (
	bolt "go.etcd.io/bbolt"
	"golang.org/x/sys/unix"
)

// dropMapped takes the pages of the cache file that reads brought into the
// process out of its mapping. They stay in the page cache; the process only
// stops counting them, so that a merge reading every segment does not make
// RSS as large as the cache file.
func (c *cache) dropMapped() {
	_ = c.db.View(func(tx *bolt.Tx) error {
		// bbolt does not remap the file while a transaction is open.
		_, _, _ = unix.Syscall(unix.SYS_MADVISE, c.db.Info().Data, uintptr(tx.Size()), unix.MADV_DONTNEED)
		return nil
	})
}
