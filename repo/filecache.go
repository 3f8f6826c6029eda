package repo

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/cairn-backup/cairn/crypto"
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

// Open returns the cached copy of h for reading ranges.
func (c *FileCache) Open(h Handle) (*os.File, bool) {
	f, err := os.Open(c.path(h))
	return f, err == nil
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
