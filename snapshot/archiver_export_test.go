package snapshot

import (
	"context"
	"io"

	"github.com/cairn-backup/cairn/pack"
	"github.com/cairn-backup/cairn/repo"
)

// ReadDirNames exposes readDirNames to the tests.
var ReadDirNames = readDirNames

// ReadSmall runs the backup's read of a file that stat found statSize bytes
// long on r, storing into store; call it inside store.WithUploader.
func ReadSmall(ctx context.Context, store *pack.Store, r io.Reader, statSize uint64) (content []repo.ID, size int64, readErr, err error) {
	a := newArchiver(store, BackupOptions{})
	ch := a.newChunker()
	return a.readSmall(ctx, ch, 0, r, statSize)
}
