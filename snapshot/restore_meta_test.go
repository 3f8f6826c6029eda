package snapshot_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/cairn-backup/cairn/snapshot"
	"golang.org/x/sys/unix"
)

// fileMeta is what a restore must give a file besides its content.
type fileMeta struct {
	mode     os.FileMode
	uid, gid int
}

func metaOf(t *testing.T, p string) fileMeta {
	t.Helper()
	fi, err := os.Lstat(p)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	return fileMeta{fi.Mode() & (os.ModePerm | os.ModeSetuid | os.ModeSetgid | os.ModeSticky), int(st.Uid), int(st.Gid)}
}

// defaultACL is a default ACL of the owner's, the group's and others'
// entries only (user::rwx, group::r-x, other::---), in the kernel's xattr form.
func defaultACL() []byte {
	b := binary.LittleEndian.AppendUint32(nil, 2) // version
	for _, e := range [][2]uint16{{0x01, 7}, {0x04, 5}, {0x20, 0}} {
		b = binary.LittleEndian.AppendUint16(b, e[0])
		b = binary.LittleEndian.AppendUint16(b, e[1])
		b = binary.LittleEndian.AppendUint32(b, 0xffffffff)
	}
	return b
}

// A restore gives every file its mode and, as root, its owner, whatever the
// umask, into new directories and existing ones, and under a target whose
// default ACL would give new files other modes.
func TestRestoreModesAndOwners(t *testing.T) {
	ctx := context.Background()
	store := newStore(t)
	src := t.TempDir()
	root := os.Geteuid() == 0
	modes := []os.FileMode{0o644, 0o444, 0o755, 0o600, 0o640, 0o750, 0o777, 0o604,
		os.ModeSetuid | 0o755, os.ModeSetgid | 0o750, os.ModeSticky | 0o644}
	owners := [][2]int{{os.Geteuid(), os.Getegid()}}
	if root {
		// Files a non-root backup could not read, and other owners.
		modes = append(modes, 0, 0o200)
		owners = append(owners, [2]int{1000, 1000}, [2]int{0, 1234}, [2]int{4321, 0})
	}
	want := map[string]fileMeta{}
	for i, m := range modes {
		for j, o := range owners {
			rel := filepath.Join("d", "e", fmt.Sprintf("f%d-%d", i, j))
			p := filepath.Join(src, rel)
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, []byte(rel), 0o600); err != nil {
				t.Fatal(err)
			}
			if root {
				if err := os.Chown(p, o[0], o[1]); err != nil {
					t.Fatal(err)
				}
			}
			if err := os.Chmod(p, m); err != nil { // after chown, which clears set-ID bits
				t.Fatal(err)
			}
			want[rel] = metaOf(t, p)
			if want[rel].mode != m {
				t.Fatalf("%s: mode %v after chmod %v", rel, want[rel].mode, m)
			}
		}
	}
	sn, err := snapshot.Backup(ctx, store, snapshot.BackupOptions{Paths: []string{src}})
	if err != nil {
		t.Fatal(err)
	}

	restore := func(label, dst string, umask int) {
		t.Helper()
		old := syscall.Umask(umask)
		defer syscall.Umask(old)
		st, err := snapshot.Restore(ctx, store, sn, snapshot.RestoreOptions{Target: dst})
		if err != nil {
			t.Fatalf("%s: %v", label, err)
		}
		if st.Files != len(want) {
			t.Fatalf("%s: %d files restored, want %d", label, st.Files, len(want))
		}
		for rel, w := range want {
			if got := metaOf(t, filepath.Join(dst, src, rel)); got != w {
				t.Errorf("%s: %s restored as %v %d:%d, want %v %d:%d", label, rel, got.mode, got.uid, got.gid, w.mode, w.uid, w.gid)
			}
		}
	}
	dst := t.TempDir()
	restore("umask 077", dst, 0o077)
	restore("umask 022, into existing directories", dst, 0o022)
	restore("umask 022", t.TempDir(), 0o022)
	restore("umask 0", t.TempDir(), 0)

	if root {
		// New directories inherit a set-group-ID target's group and bit,
		// and files made in them that group.
		sgid := t.TempDir()
		if err := os.Chown(sgid, 0, 4321); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(sgid, os.ModeSetgid|0o755); err != nil {
			t.Fatal(err)
		}
		restore("set-group-ID target of another group", sgid, 0o022)
	}

	acl := t.TempDir()
	if err := unix.Setxattr(acl, "system.posix_acl_default", defaultACL(), 0); err != nil {
		if errors.Is(err, unix.EOPNOTSUPP) {
			t.Skipf("the file system of %s has no ACLs: %v", acl, err)
		}
		t.Fatal(err)
	}
	restore("default ACL on the target", acl, 0o022)
}

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// A restore closes every descriptor it opens: those of files, of the
// directories their writers share, and of the directories hard links are
// made in.
func TestRestoreClosesDescriptors(t *testing.T) {
	ctx := context.Background()
	store := newStore(t)
	src := t.TempDir()
	writeTree(t, src, 40)
	for i := range 5 {
		p := filepath.Join(src, "empty", fmt.Sprint(i))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Link(filepath.Join(src, "d1", "sub", "f1"), filepath.Join(src, "empty", fmt.Sprint("link", i))); err != nil {
			t.Fatal(err)
		}
	}
	sn, err := snapshot.Backup(ctx, store, snapshot.BackupOptions{Paths: []string{src}})
	if err != nil {
		t.Fatal(err)
	}
	// The first restore may open what the process keeps (the poller).
	if _, err := snapshot.Restore(ctx, store, sn, snapshot.RestoreOptions{Target: t.TempDir()}); err != nil {
		t.Fatal(err)
	}
	before := openFDs(t)
	st, err := snapshot.Restore(ctx, store, sn, snapshot.RestoreOptions{Target: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if st.Files != 50 {
		t.Fatalf("%d files restored, want 50", st.Files)
	}
	if after := openFDs(t); after != before {
		t.Fatalf("%d descriptors open after the restore, %d before", after, before)
	}
}
