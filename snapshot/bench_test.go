package snapshot_test

import (
	"context"
	"os"
	"testing"

	"github.com/cairn-backup/cairn/snapshot"
)

// benchTree is the directory BenchmarkBackup reads: CAIRN_BENCH_TREE, or the
// Go standard library sources (many small files, always present here).
func benchTree(b *testing.B) string {
	if p := os.Getenv("CAIRN_BENCH_TREE"); p != "" {
		return p
	}
	p := "/usr/local/go/src"
	if _, err := os.Stat(p); err != nil {
		b.Skipf("no benchmark tree: set CAIRN_BENCH_TREE")
	}
	return p
}

// BenchmarkBackup measures a first backup and an unchanged re-backup of a
// real tree; bytes/s is over the tree's content.
func BenchmarkBackup(b *testing.B) {
	src := benchTree(b)
	ctx := context.Background()
	b.Run("first", func(b *testing.B) {
		for b.Loop() {
			store := newStore(b)
			sn, err := snapshot.Backup(ctx, store, snapshot.BackupOptions{Paths: []string{src}})
			if err != nil {
				b.Fatal(err)
			}
			b.SetBytes(sn.Summary.TotalBytesProcessed)
		}
	})
	b.Run("unchanged", func(b *testing.B) {
		store := newStore(b)
		parent, err := snapshot.Backup(ctx, store, snapshot.BackupOptions{Paths: []string{src}})
		if err != nil {
			b.Fatal(err)
		}
		for b.Loop() {
			sn, err := snapshot.Backup(ctx, store, snapshot.BackupOptions{Paths: []string{src}, Parent: parent})
			if err != nil {
				b.Fatal(err)
			}
			if sn.Summary.FilesNew+sn.Summary.FilesChanged != 0 {
				b.Fatalf("tree changed during the benchmark: %+v", sn.Summary)
			}
		}
	})
}
