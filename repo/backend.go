package repo

import (
	"context"
	"errors"
	"io"
)

// FileType names a directory of the repository layout (docs/format.md).
type FileType string

const (
	ConfigFile   FileType = "config"
	KeyFile      FileType = "keys"
	PackFile     FileType = "data"
	IndexFile    FileType = "index"
	SnapshotFile FileType = "snapshots"
	LockFile     FileType = "locks"
	RunFile      FileType = "runs"
)

// Handle names one file in a backend. Config has an empty Name.
type Handle struct {
	Type FileType
	Name string
}

func (h Handle) String() string {
	if h.Type == ConfigFile {
		return "config"
	}
	return string(h.Type) + "/" + h.Name
}

// FileInfo describes a stored file.
type FileInfo struct {
	Name string
	Size int64
}

// ErrNotFound is the only way a backend says a file is absent. Any other
// error means it could not tell.
var ErrNotFound = errors.New("file does not exist")

// Backend stores whole files by handle. Save is atomic: a file is either
// absent or complete. Implementations are safe for concurrent use.
type Backend interface {
	// Save stores size bytes read from r at h; r can be read again from the
	// start by the caller, so a retry needs no buffer.
	Save(ctx context.Context, h Handle, r io.ReaderAt, size int64) error
	// Load calls fn with length bytes from offset (length 0: to the end). fn
	// may be called more than once: a retried Load hands it a new reader from
	// offset, so fn must start over rather than keep what an earlier call read.
	Load(ctx context.Context, h Handle, offset, length int64, fn func(io.Reader) error) error
	Stat(ctx context.Context, h Handle) (FileInfo, error)
	// List calls fn for every file of type t in ascending name order (what
	// S3 servers and a sorted directory walk give), which lets a retried
	// listing resume where it failed.
	List(ctx context.Context, t FileType, fn func(FileInfo) error) error
	// Remove deletes h; removing an absent file succeeds.
	Remove(ctx context.Context, h Handle) error
	// Location names the backend for messages.
	Location() string
	Close() error
}

// ReadAll loads a whole file.
func ReadAll(ctx context.Context, be Backend, h Handle) ([]byte, error) {
	var data []byte
	err := be.Load(ctx, h, 0, 0, func(r io.Reader) error {
		var err error
		data, err = io.ReadAll(r)
		return err
	})
	return data, err
}

// ReadAt loads length bytes at offset into buf (grown as needed).
func ReadAt(ctx context.Context, be Backend, h Handle, offset int64, length int, buf []byte) ([]byte, error) {
	if cap(buf) < length {
		buf = make([]byte, length)
	}
	buf = buf[:length]
	err := be.Load(ctx, h, offset, int64(length), func(r io.Reader) error {
		_, err := io.ReadFull(r, buf)
		return err
	})
	return buf, err
}

// TempDirOf is the directory where files bound for be can be made so that
// it links them into place instead of copying them (a local repository's
// own), looking through wrappers that expose Unwrap; empty when be has none.
func TempDirOf(be Backend) string {
	for {
		if t, ok := be.(interface{ TempDir() string }); ok {
			return t.TempDir()
		}
		u, ok := be.(interface{ Unwrap() Backend })
		if !ok {
			return ""
		}
		be = u.Unwrap()
	}
}
