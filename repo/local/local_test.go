package local_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cairn-backup/cairn/repo"
	"github.com/cairn-backup/cairn/repo/local"
	"github.com/cairn-backup/cairn/repo/repotest"
	"github.com/cairn-backup/cairn/repo/retry"
	"golang.org/x/sys/unix"
)

func TestBackend(t *testing.T) {
	repotest.Run(t, func(t *testing.T) repo.Backend {
		be, err := local.Open(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		if err := be.Create(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { be.Close() })
		return be
	})
}

// The suite again on a directory that does not exist yet: init creates it,
// but a backend must not depend on that for reading and listing.
func TestBackendWithoutLayout(t *testing.T) {
	repotest.Run(t, func(t *testing.T) repo.Backend {
		be, err := local.Open(filepath.Join(t.TempDir(), "not", "yet"))
		if err != nil {
			t.Fatal(err)
		}
		return be
	})
}

// TestLayout checks the paths of docs/format.md, which other tools and
// people rely on when they look at a repository directory.
func TestLayout(t *testing.T) {
	dir := t.TempDir()
	be, err := local.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := be.Create(); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"keys", "data", "index", "snapshots", "locks"} {
		if fi, err := os.Stat(filepath.Join(dir, d)); err != nil || !fi.IsDir() {
			t.Errorf("Create did not make %s/: %v", d, err)
		}
	}
	id := strings.Repeat("ab", 32)
	files := map[repo.Handle]string{
		{Type: repo.ConfigFile}:             "config",
		{Type: repo.PackFile, Name: id}:     filepath.Join("data", "ab", id),
		{Type: repo.IndexFile, Name: id}:    filepath.Join("index", id),
		{Type: repo.SnapshotFile, Name: id}: filepath.Join("snapshots", id),
		{Type: repo.KeyFile, Name: id}:      filepath.Join("keys", id),
		{Type: repo.LockFile, Name: id}:     filepath.Join("locks", id),
	}
	ctx := context.Background()
	for h, rel := range files {
		data := []byte(h.String())
		if err := be.Save(ctx, h, bytes.NewReader(data), int64(len(data))); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(filepath.Join(dir, rel))
		if err != nil || !bytes.Equal(got, data) {
			t.Errorf("%s: %s holds %q, %v", h, rel, got, err)
		}
		// Stored files are immutable.
		if fi, err := os.Stat(filepath.Join(dir, rel)); err == nil && fi.Mode().Perm()&0o222 != 0 {
			t.Errorf("%s is writable: %v", rel, fi.Mode())
		}
	}
	if be.Location() != dir {
		t.Errorf("Location %q, want %q", be.Location(), dir)
	}
}

// TestListIgnoresTempFiles: a temporary file left by a crash is not a file
// of the repository.
func TestListIgnoresTempFiles(t *testing.T) {
	dir := t.TempDir()
	be, err := local.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := be.Create(); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{filepath.Join("snapshots", ".tmp-123"), filepath.Join("data", "ab", ".tmp-456")} {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, p)), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, p), []byte("partial"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, ft := range []repo.FileType{repo.SnapshotFile, repo.PackFile} {
		err := be.List(context.Background(), ft, func(fi repo.FileInfo) error {
			t.Errorf("list %s shows %s", ft, fi.Name)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}

type failAfter struct{ n int64 }

func (r failAfter) ReadAt(p []byte, off int64) (int, error) {
	if off+int64(len(p)) > r.n {
		return 0, os.ErrDeadlineExceeded
	}
	return len(p), nil
}

// TestFailedSaveLeavesNoTempFile: a failed save cleans up after itself, so
// interrupted uploads do not pile up in the repository directory.
func TestFailedSaveLeavesNoTempFile(t *testing.T) {
	dir := t.TempDir()
	be, err := local.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := be.Create(); err != nil {
		t.Fatal(err)
	}
	h := repo.Handle{Type: repo.PackFile, Name: strings.Repeat("cd", 32)}
	if err := be.Save(context.Background(), h, failAfter{n: 100 << 10}, 1<<20); err == nil {
		t.Fatal("save from a failing source succeeded")
	}
	if err := be.Save(context.Background(), h, bytes.NewReader(make([]byte, 10)), 20); err == nil {
		t.Fatal("save from a short source succeeded")
	}
	err = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			t.Errorf("left behind: %s", p)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

// A pack assembled in a temporary file is copied by the kernel, also through
// the retry wrapper; what lands must be the file's bytes, and a file shorter
// than the size announced must not land at all.
func TestSaveFromFile(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	be, err := local.Open(filepath.Join(dir, "repo"))
	if err != nil {
		t.Fatal(err)
	}
	if err := be.Create(); err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("0123456789abcdef"), 300_000) // 4.8 MB
	src, err := os.Create(filepath.Join(dir, "src"))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	if _, err := src.Write(data); err != nil {
		t.Fatal(err)
	}
	wrapped := retry.New(be, retry.Options{})
	h := repo.Handle{Type: repo.PackFile, Name: "aa" + strings.Repeat("0", 62)}
	if err := wrapped.Save(ctx, h, src, int64(len(data))); err != nil {
		t.Fatal(err)
	}
	got, err := repo.ReadAll(ctx, be, h)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("saved %d bytes that differ from the %d of the source file", len(got), len(data))
	}

	short := repo.Handle{Type: repo.PackFile, Name: "bb" + strings.Repeat("0", 62)}
	if err := be.Save(ctx, short, src, int64(len(data))+10); err == nil {
		t.Fatal("a source file shorter than the size was saved")
	}
	if _, err := be.Stat(ctx, short); err == nil {
		t.Fatal("a short save left a file under the full name")
	}
}

// TestSaveLinksTempFile: an unnamed temporary file on the repository's file
// system (how data packs are filled) becomes the stored file itself, read-only,
// with nothing left beside it; stored again, the same name keeps its content.
func TestSaveLinksTempFile(t *testing.T) {
	ctx := context.Background()
	be, err := local.Open(filepath.Join(t.TempDir(), "repo"))
	if err != nil {
		t.Fatal(err)
	}
	if err := be.Create(); err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Open(be.TempDir(), unix.O_TMPFILE|unix.O_RDWR|unix.O_CLOEXEC, 0o600)
	if err != nil {
		t.Skipf("no O_TMPFILE here: %v", err)
	}
	src := os.NewFile(uintptr(fd), "tmpfile")
	defer src.Close()
	data := bytes.Repeat([]byte("pack"), 100_000)
	if _, err := src.Write(data); err != nil {
		t.Fatal(err)
	}
	h := repo.Handle{Type: repo.PackFile, Name: "cc" + strings.Repeat("0", 62)}
	if err := retry.New(be, retry.Options{}).Save(ctx, h, src, int64(len(data))); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		t.Fatal(err)
	}
	if st.Nlink != 1 || st.Mode&0o777 != 0o400 {
		t.Errorf("source after save: %d links, mode %o; want the stored file, 1 link, 0400", st.Nlink, st.Mode&0o777)
	}
	got, err := repo.ReadAll(ctx, be, h)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back %d bytes (%v), want the %d saved", len(got), err, len(data))
	}
	// A second save of a named file copies; the directory holds one file.
	if err := be.Save(ctx, h, src, int64(len(data))); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(filepath.Dir(filepath.Join(be.Location(), "data", "cc", h.Name)))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		t.Errorf("pack directory holds %d entries, want 1", len(entries))
	}
}
