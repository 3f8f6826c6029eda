package snapshot

import (
	"context"
	"io"

	"github.com/cairn-backup/cairn/chunk"
	"github.com/cairn-backup/cairn/pack"
	"github.com/cairn-backup/cairn/repo"
)

// ReadDirNames exposes readDirNames to the tests.
var ReadDirNames = readDirNames

// ReadSmall runs the backup's read of a file that stat found statSize bytes
// long on r, storing into store; call it inside store.WithUploader.
func ReadSmall(ctx context.Context, store *pack.Store, r io.Reader, statSize uint64) (content []repo.ID, size int64, readErr, err error) {
	cfg := store.Repo().Config()
	a := &archiver{store: store, cfg: cfg}
	a.bufs.New = func() any { b := make([]byte, 0, 2<<20); return &b }
	ch := chunk.New(cfg.Polynomial, cfg.ChunkMin, cfg.ChunkMax, cfg.ChunkAvgBits)
	return a.readSmall(ctx, ch, 0, r, statSize)
}
