package snapshot

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// A chunk that starts mid-block must allocate only the blocks holding its
// non-zero bytes: the zeros around an island stay holes.
func TestWriteAtSparseAlignsToFileBlocks(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "sparse"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fd := int(f.Fd())

	const off = 5*blockSize + 1000 // the chunk's offset in the file, not block-aligned
	chunk := make([]byte, 20*blockSize)
	island := chunk[8*blockSize+10 : 8*blockSize+30] // within file block 13
	for i := range island {
		island[i] = byte(i + 1)
	}
	if err := writeAt(fd, chunk, off, true); err != nil {
		t.Fatal(err)
	}
	size := int64(off + len(chunk))
	if err := unix.Ftruncate(fd, size); err != nil {
		t.Fatal(err)
	}

	got := make([]byte, size)
	if _, err := f.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[off:], chunk) || !bytes.Equal(got[:off], make([]byte, off)) {
		t.Fatal("content differs from what was written")
	}
	start, err := unix.Seek(fd, 0, unix.SEEK_DATA)
	if err != nil {
		t.Skipf("SEEK_DATA: %v", err)
	}
	end, err := unix.Seek(fd, start, unix.SEEK_HOLE)
	if err != nil {
		t.Fatal(err)
	}
	block := (off + 8*blockSize + 10) / blockSize * blockSize
	if start != int64(block) || end != int64(block+blockSize) {
		t.Errorf("data at [%d, %d), want only the island's block [%d, %d)", start, end, block, block+blockSize)
	}
}

// Metadata of a restored entry must never land on what a symlink put in
// its place points to.
func TestMetaNeverFollowsReplacedName(t *testing.T) {
	dir := t.TempDir()
	victim := filepath.Join(dir, "victim")
	if err := os.WriteFile(victim, []byte("outside"), 0o644); err != nil {
		t.Fatal(err)
	}
	dirfd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(dirfd)
	fd, err := unix.Openat(dirfd, "restored", unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	// The name now leads elsewhere; the open file is what was written.
	if err := os.Rename(filepath.Join(dir, "restored"), filepath.Join(dir, "moved")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(victim, filepath.Join(dir, "restored")); err != nil {
		t.Fatal(err)
	}
	n := &Node{Name: Name("restored"), Type: TypeFile, Mode: 0o4711, UID: uint32(os.Getuid()), GID: uint32(os.Getgid())}
	if err := applyMetaFd(fd, n, created{}); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		t.Fatal(err)
	}
	if st.Mode&0o7777 != 0o4711 {
		t.Errorf("restored file: mode %o, want 4711", st.Mode&0o7777)
	}
	// By name, as for a FIFO or device: the symlink is refused, not followed.
	fifo := &Node{Name: Name("restored"), Type: TypeFIFO, Mode: 0o6777}
	if err := applyMeta(dirfd, "restored", fifo); err == nil {
		t.Error("applyMeta on a symlink standing in for a FIFO: no error")
	}
	fi, err := os.Stat(victim)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o644 || fi.Mode()&(os.ModeSetuid|os.ModeSetgid) != 0 {
		t.Errorf("the symlink's target changed mode to %v", fi.Mode())
	}
}

// A file of several blobs gets its whole size reserved before any content
// is written, on a disk file system; on tmpfs nothing is reserved up front.
func TestPreallocateReservesTheFile(t *testing.T) {
	for _, dir := range []string{t.TempDir(), "/dev/shm"} {
		dfd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
		if err != nil {
			continue // no /dev/shm here
		}
		var st unix.Statfs_t
		if err := unix.Fstatfs(dfd, &st); err != nil {
			t.Fatal(err)
		}
		got := preallocates(dfd)
		unix.Close(dfd)
		if tmpfs := st.Type == unix.TMPFS_MAGIC; got == tmpfs {
			t.Errorf("%s (tmpfs %v): preallocates = %v", dir, tmpfs, got)
		}
	}

	f, err := os.Create(filepath.Join(t.TempDir(), "big"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const size = 3<<20 + 123
	if err := preallocate(int(f.Fd()), size); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	if st.Size != size {
		t.Errorf("size %d after preallocating, want %d", st.Size, size)
	}
	if st.Blocks*512 < size && preallocates(int(f.Fd())) {
		t.Errorf("%d bytes reserved, want at least %d", st.Blocks*512, size)
	}
}

// Root creates a file with its final permissions only when the file is
// already its owner's: content meant for another owner or group is
// readable by root alone until the chown, and set-ID bits wait for it.
func TestCreationModeBeforeChown(t *testing.T) {
	if !isRoot {
		t.Skip("only root restores owners")
	}
	r := &restorer{umask: 0o022}
	d := &dirState{plainModes: true, ownGroup: true}
	for _, c := range []struct {
		uid, gid   uint32
		mode, want uint32
		has        created
	}{
		{0, egid, 0o644, 0o644, created{owner: true, mode: true}},
		{1000, egid, 0o644, 0o600, created{}},
		{0, egid + 1, 0o640, 0o600, created{}},
		{0, egid, 0o4755, 0o600, created{owner: true}},
		{0, egid, 0o666, 0o600, created{owner: true}}, // the umask takes 022
	} {
		mode, has := r.creation(d, &Node{Type: TypeFile, Mode: c.mode, UID: c.uid, GID: c.gid})
		if mode != c.want || has != c.has {
			t.Errorf("%d:%d %o: created %o %+v, want %o %+v", c.uid, c.gid, c.mode, mode, has, c.want, c.has)
		}
	}
	// A directory with a default ACL, or made before the restore: chmod after.
	for _, d := range []*dirState{{plainModes: false, ownGroup: true}, {}} {
		if mode, has := r.creation(d, &Node{Type: TypeFile, Mode: 0o644}); mode != 0o600 || has.mode {
			t.Errorf("directory %+v: created %o %+v, want 0600 and a chmod", d, mode, has)
		}
	}
}
