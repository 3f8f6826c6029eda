// Package mem is an in-memory repository backend for unit tests.
package mem

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"

	"github.com/cairn-backup/cairn/repo"
)

// Backend keeps files in a map.
type Backend struct {
	mu    sync.Mutex
	files map[repo.Handle][]byte
}

var _ repo.Backend = (*Backend)(nil)

// New returns an empty backend.
func New() *Backend { return &Backend{files: map[repo.Handle][]byte{}} }

func (b *Backend) Location() string { return "mem:" }
func (b *Backend) Close() error     { return nil }

func (b *Backend) Save(ctx context.Context, h repo.Handle, r io.ReaderAt, size int64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	data := make([]byte, size)
	// A ReaderAt may return io.EOF along with the last bytes.
	if n, err := r.ReadAt(data, 0); int64(n) < size || (err != nil && err != io.EOF) {
		if err == nil || err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return fmt.Errorf("save %s: %w", h, err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.files[h] = data
	return nil
}

func (b *Backend) Load(ctx context.Context, h repo.Handle, offset, length int64, fn func(io.Reader) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	b.mu.Lock()
	data, ok := b.files[h]
	b.mu.Unlock()
	if !ok {
		return fmt.Errorf("%s: %w", h, repo.ErrNotFound)
	}
	if offset > int64(len(data)) {
		return fmt.Errorf("load %s: offset %d beyond size %d", h, offset, len(data))
	}
	data = data[offset:]
	if length > 0 {
		if length > int64(len(data)) {
			return fmt.Errorf("load %s: range beyond size", h)
		}
		data = data[:length]
	}
	return fn(bytes.NewReader(data))
}

func (b *Backend) Stat(ctx context.Context, h repo.Handle) (repo.FileInfo, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	data, ok := b.files[h]
	if !ok {
		return repo.FileInfo{}, fmt.Errorf("%s: %w", h, repo.ErrNotFound)
	}
	return repo.FileInfo{Name: h.Name, Size: int64(len(data))}, nil
}

func (b *Backend) List(ctx context.Context, t repo.FileType, fn func(repo.FileInfo) error) error {
	b.mu.Lock()
	var infos []repo.FileInfo
	for h, d := range b.files {
		if h.Type == t {
			infos = append(infos, repo.FileInfo{Name: h.Name, Size: int64(len(d))})
		}
	}
	b.mu.Unlock()
	slices.SortFunc(infos, func(x, y repo.FileInfo) int { return strings.Compare(x.Name, y.Name) })
	for _, fi := range infos {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := fn(fi); err != nil {
			return err
		}
	}
	return nil
}

func (b *Backend) Remove(ctx context.Context, h repo.Handle) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.files, h)
	return nil
}
