package repo

import (
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/cairn-backup/cairn/crypto"
	"golang.org/x/sys/unix"
)

// FileCache keeps local copies of immutable repository files (snapshots,
// index files, run records, tree packs) by content address, so that reading them again
// costs no transfer. A copy is checked before use: whole files against their
// name, pack ranges by the blob authentication of whoever reads them. A
// missing or damaged copy is fetched again; deleting the cache loses nothing.
type FileCache struct {
	dir string
}

// NewFileCache returns a cache in dir, created when first written.
func NewFileCache(dir string) *FileCache { return &FileCache{dir: dir} }

func (c *FileCache) path(h Handle) string {
	name := h.Name
	if len(name) < 2 {
		name = "__" + name
	}
	return filepath.Join(c.dir, string(h.Type), name[:2], h.Name)
}

// Get returns the cached copy of h when its content matches its name.
func (c *FileCache) Get(h Handle) ([]byte, bool) {
	b, err := os.ReadFile(c.path(h))
	if err != nil {
		return nil, false
	}
	if ID(crypto.Hash(b)).String() != h.Name {
		c.Remove(h)
		return nil, false
	}
	return b, true
}

// ReadAt fills p from the cached copy of h at off. It reports false when
// there is no copy, and an error when the copy cannot fill p. It reads
// through a bare descriptor: an *os.File costs four fcntl calls and an
// epoll registration more, and a walk reads a tree for every directory.
func (c *FileCache) ReadAt(h Handle, p []byte, off int64) (bool, error) {
	fd, err := unix.Open(c.path(h), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return false, nil
	}
	defer unix.Close(fd)
	for n := 0; n < len(p); {
		m, err := unix.Pread(fd, p[n:], off+int64(n))
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			return true, fmt.Errorf("cached %s: %w", h, err)
		case m == 0:
			return true, fmt.Errorf("cached %s: %w", h, io.ErrUnexpectedEOF)
		}
		n += m
	}
	return true, nil
}

// Put stores a copy of h. Failing to is not an error: the cache is only
// an accelerator.
func (c *FileCache) Put(h Handle, data []byte) {
	p := c.path(h)
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return
	}
	f, err := os.CreateTemp(filepath.Dir(p), ".tmp-")
	if err != nil {
		return
	}
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), p)
	}
	if err != nil {
		_ = os.Remove(f.Name())
	}
}

// Remove drops the copy of h, if any.
func (c *FileCache) Remove(h Handle) { _ = os.Remove(c.path(h)) }

// Retain removes the cached files of type t whose name keep rejects, and
// temporary files left by an interrupted Put.
func (c *FileCache) Retain(t FileType, keep func(name string) bool) {
	root := filepath.Join(c.dir, string(t))
	_ = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		if name := d.Name(); strings.HasPrefix(name, ".tmp-") || !keep(name) {
			_ = os.Remove(p)
		}
		return nil
	})
}

// cached reports whether files of type t are kept in the cache: the small,
// immutable ones that listings and incremental runs read again and again.
func cached(t FileType) bool { return t == SnapshotFile || t == IndexFile || t == RunFile }
