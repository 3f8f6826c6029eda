package main

import (
	"context"
	"io"
	"sync/atomic"

	"github.com/cairn-backup/cairn/repo"
)

// traffic counts the bytes this process moved to and from the repository,
// retries included: on S3 that is what the provider bills.
var traffic struct {
	read, written atomic.Int64
}

// countingBackend feeds traffic.
type countingBackend struct{ repo.Backend }

func (b countingBackend) Unwrap() repo.Backend { return b.Backend }

func (b countingBackend) Save(ctx context.Context, h repo.Handle, r io.ReaderAt, size int64) error {
	err := b.Backend.Save(ctx, h, r, size)
	traffic.written.Add(size) // attempted bytes: a failed upload was sent too
	return err
}

func (b countingBackend) Load(ctx context.Context, h repo.Handle, offset, length int64, fn func(io.Reader) error) error {
	return b.Backend.Load(ctx, h, offset, length, func(r io.Reader) error {
		return fn(countingReader{r})
	})
}

type countingReader struct{ io.Reader }

func (r countingReader) Read(p []byte) (int, error) {
	n, err := r.Reader.Read(p)
	traffic.read.Add(int64(n))
	return n, err
}
