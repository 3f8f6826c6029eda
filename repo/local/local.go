// Package local is a repository backend on a local directory.
package local

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/cairn-backup/cairn/repo"
	"golang.org/x/sys/unix"
)

// Backend stores files under a directory with the layout of docs/format.md.
type Backend struct {
	dir string
}

var _ repo.Backend = (*Backend)(nil)

var dirs = []repo.FileType{repo.KeyFile, repo.PackFile, repo.IndexFile, repo.SnapshotFile, repo.LockFile, repo.RunFile}

// Open returns a backend on dir, which need not exist yet.
func Open(dir string) (*Backend, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("repository path %s: %w", dir, err)
	}
	return &Backend{dir: abs}, nil
}

// Create makes the directory layout (for init).
func (b *Backend) Create() error {
	for _, t := range dirs {
		if err := os.MkdirAll(filepath.Join(b.dir, string(t)), 0o700); err != nil {
			return err
		}
	}
	return nil
}

func (b *Backend) Location() string { return b.dir }
func (b *Backend) Close() error     { return nil }

func (b *Backend) path(h repo.Handle) string {
	if h.Type == repo.ConfigFile {
		return filepath.Join(b.dir, "config")
	}
	if h.Type == repo.PackFile && len(h.Name) >= 2 {
		return filepath.Join(b.dir, string(h.Type), h.Name[:2], h.Name)
	}
	return filepath.Join(b.dir, string(h.Type), h.Name)
}

// Save writes to a temporary file, fsyncs it, renames it into place and
// fsyncs the directory, so a crash leaves the file whole or absent.
func (b *Backend) Save(ctx context.Context, h repo.Handle, r io.ReaderAt, size int64) (err error) {
	if err := ctx.Err(); err != nil {
		return err
	}
	final := b.path(h)
	dir := filepath.Dir(final)
	if linked, err := linkFile(r, size, dir, final); linked || err != nil {
		if err != nil {
			return fmt.Errorf("save %s: %w", h, err)
		}
		return nil
	}
	f, err := os.CreateTemp(dir, ".tmp-")
	if errors.Is(err, fs.ErrNotExist) {
		if err = os.MkdirAll(dir, 0o700); err == nil {
			f, err = os.CreateTemp(dir, ".tmp-")
		}
	}
	if err != nil {
		return fmt.Errorf("save %s: %w", h, err)
	}
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(f.Name())
		}
	}()
	n, err := copyFrom(f, r, size)
	if err != nil {
		return fmt.Errorf("save %s: %w", h, err)
	}
	if n != size {
		// A short source must not become a short file under a full name.
		return fmt.Errorf("save %s: source ended after %d of %d bytes: %w", h, n, size, io.ErrUnexpectedEOF)
	}
	if err = f.Sync(); err != nil {
		return fmt.Errorf("save %s: fsync: %w", h, err)
	}
	if err = f.Close(); err != nil {
		return fmt.Errorf("save %s: %w", h, err)
	}
	// Stored files are immutable: read-only guards against accidents.
	_ = os.Chmod(f.Name(), 0o400)
	if err = os.Rename(f.Name(), final); err != nil {
		return fmt.Errorf("save %s: %w", h, err)
	}
	return syncDir(dir)
}

// TempDir is where a pack being filled can live so that Save can link it
// into place (see linkFile): the repository's own file system.
func (b *Backend) TempDir() string { return b.dir }

// linkFile gives r its name in the repository if it is an unnamed
// temporary file (O_TMPFILE) of size bytes on the repository's file system:
// a data pack then is never copied. false with no error: r cannot be
// linked, the caller copies it.
func linkFile(r io.ReaderAt, size int64, dir, final string) (bool, error) {
	sf, ok := unwrapFile(r)
	if !ok {
		return false, nil
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(sf.Fd()), &st); err != nil || st.Nlink != 0 || st.Size != size {
		return false, nil
	}
	tmp := filepath.Join(dir, ".tmp-"+filepath.Base(final))
	link := func() error {
		return unix.Linkat(unix.AT_FDCWD, fmt.Sprintf("/proc/self/fd/%d", sf.Fd()), unix.AT_FDCWD, tmp, unix.AT_SYMLINK_FOLLOW)
	}
	err := link()
	if errors.Is(err, unix.ENOENT) && os.MkdirAll(dir, 0o700) == nil {
		err = link() // the directory was missing, or still ENOENT: not O_TMPFILE
	}
	// EXDEV (another file system), ENOENT (not O_TMPFILE), EEXIST (the
	// same pack being saved at once elsewhere): copy instead.
	if err != nil {
		return false, nil
	}
	done := false
	defer func() {
		if !done {
			_ = os.Remove(tmp)
		}
	}()
	if err := sf.Sync(); err != nil {
		return true, fmt.Errorf("fsync: %w", err)
	}
	// Stored files are immutable: read-only guards against accidents.
	_ = unix.Fchmod(int(sf.Fd()), 0o400)
	if err := os.Rename(tmp, final); err != nil {
		return true, err
	}
	done = true
	return true, syncDir(dir)
}

// unwrapFile finds the file under r's wrappers, if r is one.
func unwrapFile(r io.ReaderAt) (*os.File, bool) {
	for {
		if f, ok := r.(*os.File); ok {
			return f, true
		}
		u, ok := r.(interface{ Unwrap() io.ReaderAt })
		if !ok {
			return nil, false
		}
		r = u.Unwrap()
	}
}

// copyFrom writes size bytes of r to f. A source that is a file (a data
// pack assembled in a temporary file) is copied inside the kernel, which
// spares a read and a write through user space for every pack.
func copyFrom(f *os.File, r io.ReaderAt, size int64) (int64, error) {
	if sf, ok := unwrapFile(r); ok {
		var n int64
		for n < size {
			off := n
			m, err := unix.CopyFileRange(int(sf.Fd()), &off, int(f.Fd()), nil, int(size-n), 0)
			if err != nil {
				if n == 0 && (errors.Is(err, unix.EXDEV) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP)) {
					break // not between these two files: copy by hand
				}
				return n, err
			}
			if m == 0 {
				return n, nil // the source is shorter than size
			}
			n += int64(m)
		}
		if n > 0 {
			return n, nil
		}
	}
	return io.Copy(f, io.NewSectionReader(r, 0, size))
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, os.ErrInvalid) {
		return fmt.Errorf("fsync %s: %w", dir, err)
	}
	return nil
}

func (b *Backend) Load(ctx context.Context, h repo.Handle, offset, length int64, fn func(io.Reader) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	f, err := os.Open(b.path(h))
	if err != nil {
		return wrap(h, err)
	}
	defer f.Close()
	if offset > 0 || length > 0 {
		// A range past the end is an error: a short read would look whole.
		fi, err := f.Stat()
		if err != nil {
			return fmt.Errorf("load %s: %w", h, err)
		}
		if offset > fi.Size() || length > fi.Size()-offset {
			return fmt.Errorf("load %s: range %d+%d beyond size %d", h, offset, length, fi.Size())
		}
	}
	var r io.Reader = f
	if length > 0 {
		r = io.NewSectionReader(f, offset, length)
	} else if offset > 0 {
		if _, err := f.Seek(offset, io.SeekStart); err != nil {
			return fmt.Errorf("load %s: %w", h, err)
		}
	}
	return fn(r)
}

func (b *Backend) Stat(ctx context.Context, h repo.Handle) (repo.FileInfo, error) {
	fi, err := os.Stat(b.path(h))
	if err != nil {
		return repo.FileInfo{}, wrap(h, err)
	}
	return repo.FileInfo{Name: h.Name, Size: fi.Size()}, nil
}

func (b *Backend) List(ctx context.Context, t repo.FileType, fn func(repo.FileInfo) error) error {
	root := filepath.Join(b.dir, string(t))
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if p == root && errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if d.IsDir() || strings.HasPrefix(d.Name(), ".tmp-") {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // removed while listing
			}
			return err
		}
		return fn(repo.FileInfo{Name: d.Name(), Size: fi.Size()})
	})
	if err != nil {
		return fmt.Errorf("list %s: %w", t, err)
	}
	return nil
}

func (b *Backend) Remove(ctx context.Context, h repo.Handle) error {
	err := os.Remove(b.path(h))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", h, err)
	}
	return nil
}

func wrap(h repo.Handle, err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s: %w", h, repo.ErrNotFound)
	}
	return fmt.Errorf("%s: %w", h, err)
}
