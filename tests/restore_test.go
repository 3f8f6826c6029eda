package tests

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
)

// The tests in this file cover `cairn restore` (docs/cli.md, "cairn restore").

// restoreSource writes a tree with the kinds of entries every backup has.
func restoreSource(t *testing.T, src string) {
	t.Helper()
	WriteFile(t, filepath.Join(src, "a.txt"), []byte("alpha\n"))
	WriteFile(t, filepath.Join(src, "b.log"), []byte("log line\n"))
	WriteFile(t, filepath.Join(src, "sub", "c.txt"), randomBytes(11, 2<<20+3))
	WriteFile(t, filepath.Join(src, "sub", "d.log"), []byte("d"))
	WriteFile(t, filepath.Join(src, "sub", "deep", "e.txt"), randomBytes(12, 7000))
	WriteFile(t, filepath.Join(src, "other", "f.bin"), randomBytes(13, 1))
	if err := os.MkdirAll(filepath.Join(src, "empty"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../a.txt", filepath.Join(src, "sub", "link")); err != nil {
		t.Fatal(err)
	}
	chmod(t, filepath.Join(src, "a.txt"), 0o600)
	chmod(t, filepath.Join(src, "other", "f.bin"), 0o755)
	chmod(t, filepath.Join(src, "empty"), 0o700)
}

func TestRestoreTarget(t *testing.T) {
	t.Parallel()
	e := NewRepo(t)
	src := filepath.Join(e.Dir, "src")
	restoreSource(t, src)
	id := backupID(t, e, src)

	target := filepath.Join(e.Dir, "target")
	sum := Summary(t, e.Must("restore", "latest", "--target", target, "--json").Stdout)
	sameTree(t, src, restoredAt(target, src))
	wantCounts(t, "restore", sum, map[string]int64{"files_restored": 6, "errors": 0})
	if sum["snapshot_id"] != id {
		t.Errorf("restore summary names snapshot %v, want %s", sum["snapshot_id"], id)
	}
	// Only the backed-up path is recreated under the target.
	top, err := os.ReadDir(target)
	if err != nil {
		t.Fatal(err)
	}
	first := strings.Split(strings.TrimPrefix(src, "/"), "/")[0]
	if len(top) != 1 || top[0].Name() != first {
		t.Errorf("target holds %v, want only %s", top, first)
	}

	// By id prefix, into a target that does not exist yet, several levels deep.
	target2 := filepath.Join(e.Dir, "x", "y", "target")
	e.Must("restore", id[:8], "--target", target2)
	sameTree(t, src, restoredAt(target2, src))
}

// --connections sets how many restore workers read at once; one alone must
// still finish a file split over several batches, and many the same tree.
func TestRestoreConnections(t *testing.T) {
	t.Parallel()
	e := NewRepo(t)
	src := filepath.Join(e.Dir, "src")
	WriteFile(t, filepath.Join(src, "big.bin"), randomBytes(21, 20<<20+5))
	for i := range 300 {
		WriteFile(t, filepath.Join(src, "small", fmt.Sprintf("%03d", i)), randomBytes(uint64(100+i), 100+i*37))
	}
	backupID(t, e, src)
	for _, n := range []string{"1", "16"} {
		target := filepath.Join(e.Dir, "target"+n)
		e.Must("--connections", n, "restore", "latest", "--target", target)
		sameTree(t, src, restoredAt(target, src))
	}
}

// A restore sizes its batches of open files to the limit on descriptors.
func TestRestoreFewDescriptors(t *testing.T) {
	t.Parallel()
	e := NewRepo(t)
	src := filepath.Join(e.Dir, "src")
	for i := range 1000 {
		WriteFile(t, filepath.Join(src, fmt.Sprintf("d%d", i%10), fmt.Sprintf("%04d", i)), randomBytes(uint64(i), 50+i))
	}
	backupID(t, e, src)
	target := filepath.Join(e.Dir, "target")
	cmd := e.Cmd("restore", "latest", "--target", target)
	// Soft and hard limit, so that the program cannot raise it.
	cmd.Path, cmd.Args = "/bin/sh", append([]string{"sh", "-c", `ulimit -n 128 && exec "$0" "$@"`}, cmd.Args...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("restore with 128 descriptors: %v\n%s", err, out)
	}
	sameTree(t, src, restoredAt(target, src))
}

// restoredFiles lists the regular files below root, relative to it.
func restoredFiles(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if p == root && errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if d.Type().IsRegular() {
			rel, _ := filepath.Rel(root, p)
			out = append(out, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(out)
	return out
}

func TestRestoreIncludeExclude(t *testing.T) {
	t.Parallel()
	e := NewRepo(t)
	src := filepath.Join(e.Dir, "src")
	restoreSource(t, src)
	id := backupID(t, e, src)

	cases := []struct {
		args []string
		want []string
	}{
		{[]string{"--include", "*.txt"}, []string{"a.txt", "sub/c.txt", "sub/deep/e.txt"}},
		{[]string{"--include", "sub"}, []string{"sub/c.txt", "sub/d.log", "sub/deep/e.txt"}},
		{[]string{"--include", src + "/other"}, []string{"other/f.bin"}},
		{[]string{"--include", "sub/**/e.txt"}, []string{"sub/deep/e.txt"}},
		{[]string{"--include", "*.log", "--include", "f.*"}, []string{"b.log", "other/f.bin", "sub/d.log"}},
		{[]string{"--exclude", "*.log"}, []string{"a.txt", "other/f.bin", "sub/c.txt", "sub/deep/e.txt"}},
		{[]string{"--exclude", "sub"}, []string{"a.txt", "b.log", "other/f.bin"}},
		{[]string{"--include", "sub", "--exclude", "*.log"}, []string{"sub/c.txt", "sub/deep/e.txt"}},
		{[]string{"--include", "nothing-matches"}, nil},
	}
	for i, c := range cases {
		target := filepath.Join(e.Dir, "target", string(rune('a'+i)))
		e.Must(append([]string{"restore", id, "--target", target}, c.args...)...)
		root := restoredAt(target, src)
		got := restoredFiles(t, root)
		if !slices.Equal(got, c.want) {
			t.Errorf("restore %v: %v, want %v", c.args, got, c.want)
			continue
		}
		// What is restored is restored whole.
		for _, f := range got {
			a, b := treeState(t, src)[f], treeState(t, root)[f]
			if a != b {
				t.Errorf("restore %v: %s is %s, want %s", c.args, f, b, a)
			}
		}
	}
}

func TestRestoreVerify(t *testing.T) {
	t.Parallel()
	e := NewRepo(t)
	src := filepath.Join(e.Dir, "src")
	restoreSource(t, src)
	e.Must("backup", src)
	target := filepath.Join(e.Dir, "target")
	sum := Summary(t, e.Must("restore", "latest", "--target", target, "--verify", "--json").Stdout)
	wantCounts(t, "--verify", sum, map[string]int64{"files_verified": 6, "errors": 0})
	sameTree(t, src, restoredAt(target, src))
}

func TestRestoreOverwrite(t *testing.T) {
	t.Parallel()
	e := NewRepo(t)
	src := filepath.Join(e.Dir, "src")
	restoreSource(t, src)
	e.Must("backup", src)
	target := filepath.Join(e.Dir, "target")
	e.Must("restore", "latest", "--target", target)
	root := restoredAt(target, src)
	const nfiles = 6

	edited := filepath.Join(root, "sub", "deep", "e.txt")
	removed := filepath.Join(root, "a.txt")
	damage := func() {
		WriteFile(t, edited, []byte("edited in the target"))
		if err := os.Remove(removed); err != nil {
			t.Fatal(err)
		}
	}
	read := func(p string) string {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}

	// never: existing files stay as they are; missing ones come back.
	damage()
	sum := Summary(t, e.Must("restore", "latest", "--target", target, "--overwrite", "never", "--json").Stdout)
	if got := read(edited); got != "edited in the target" {
		t.Errorf("--overwrite never replaced an existing file")
	}
	if _, err := os.Stat(removed); err != nil {
		t.Errorf("--overwrite never did not restore a missing file: %v", err)
	}
	// Every existing entry is left: the 5 files still there and the symlink.
	wantCounts(t, "--overwrite never", sum, map[string]int64{"files_skipped": nfiles, "errors": 0})

	// if-changed: only what differs from the snapshot is written.
	if err := os.Remove(removed); err != nil {
		t.Fatal(err)
	}
	sum = Summary(t, e.Must("restore", "latest", "--target", target, "--overwrite", "if-changed", "--json").Stdout)
	sameTree(t, src, root)
	// The 4 files neither edited nor removed are left.
	wantCounts(t, "--overwrite if-changed", sum, map[string]int64{"files_skipped": nfiles - 2, "errors": 0})

	// always (the default): everything is written again.
	damage()
	sum = Summary(t, e.Must("restore", "latest", "--target", target, "--json").Stdout)
	sameTree(t, src, root)
	wantCounts(t, "--overwrite always", sum, map[string]int64{"files_skipped": 0, "files_restored": nfiles, "errors": 0})
	damage()
	e.Must("restore", "latest", "--target", target, "--overwrite", "always")
	sameTree(t, src, root)

	wantErrLine(t, e.Fails(1, "restore", "latest", "--target", target, "--overwrite", "sometimes"), "sometimes")
}

func TestRestoreDelete(t *testing.T) {
	t.Parallel()
	e := NewRepo(t)
	src := filepath.Join(e.Dir, "src")
	restoreSource(t, src)
	e.Must("backup", src)
	target := filepath.Join(e.Dir, "target")
	root := restoredAt(target, src)
	outside := filepath.Join(e.Dir, "outside")
	WriteFile(t, filepath.Join(outside, "keep"), []byte("not in the target"))
	sibling := filepath.Join(e.Dir, "sibling-of-target")
	WriteFile(t, sibling, []byte("next to the target"))

	extras := []string{
		filepath.Join(root, "sub", "extra"),
		filepath.Join(root, "newdir", "x", "y"),
		filepath.Join(root, "empty", "z"),
		filepath.Join(target, "top-extra"),
	}
	for _, p := range extras {
		WriteFile(t, p, []byte("extra"))
	}
	// A link out of the target is removed, not followed.
	if err := os.Symlink(outside, filepath.Join(root, "sub", "link-out")); err != nil {
		t.Fatal(err)
	}

	e.Must("restore", "latest", "--target", target)
	for _, p := range extras {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("restore without --delete removed %s: %v", p, err)
		}
	}

	e.Must("restore", "latest", "--target", target, "--delete")
	sameTree(t, src, root)
	for _, p := range append(extras, filepath.Join(root, "newdir"), filepath.Join(root, "sub", "link-out")) {
		if _, err := os.Lstat(p); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("--delete left %s (err %v)", p, err)
		}
	}
	for _, p := range []string{filepath.Join(outside, "keep"), sibling} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("--delete removed %s, outside the target: %v", p, err)
		}
	}
}

func TestRestoreAsOf(t *testing.T) {
	t.Parallel()
	e := NewRepo(t)
	src := filepath.Join(e.Dir, "src")
	f := filepath.Join(src, "f")
	versions := []struct{ content, host, time string }{
		{"v1", "h", "2001-01-01 10:00:00"},
		{"v2", "h", "2001-01-02 10:00:00"},
		{"v3", "h", "2001-01-03 10:00:00"},
		{"other host", "o", "2001-01-02 11:00:00"},
	}
	for _, v := range versions {
		WriteFile(t, f, []byte(v.content))
		e.Must("backup", src, "--host", v.host, "--time", v.time)
	}

	n := 0
	restored := func(args ...string) string {
		t.Helper()
		n++
		target := filepath.Join(e.Dir, "target", string(rune('a'+n)))
		e.Must(append([]string{"restore", "--target", target}, args...)...)
		b, err := os.ReadFile(restoredAt(target, f))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"--as-of", "2001-01-02 10:30:00", "--host", "h"}, "v2"},
		{[]string{"--as-of", "2001-01-02 10:00:00", "--host", "h"}, "v2"},
		{[]string{"--as-of", "2001-01-02 09:59:59", "--host", "h"}, "v1"},
		{[]string{"--as-of", "2001-01-02 12:00:00"}, "other host"},
		{[]string{"latest", "--as-of", "2001-01-02 12:00:00", "--host", "h"}, "v2"},
		{[]string{"--as-of", "2001-01-09T00:00:00+14:00", "--host", "h"}, "v3"},
		{[]string{"latest"}, "v3"},
		{[]string{"latest", "--host", "o"}, "other host"},
	}
	for _, c := range cases {
		if got := restored(c.args...); got != c.want {
			t.Errorf("restore %v: %q, want %q", c.args, got, c.want)
		}
	}
	target := filepath.Join(e.Dir, "none")
	wantErrLine(t, e.Fails(1, "restore", "--target", target, "--as-of", "2000-12-31 00:00:00"), "no snapshot")
	wantErrLine(t, e.Fails(1, "restore", "--target", target, "--as-of", "next week"), "next week")
	if _, err := os.Stat(target); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a failed restore created its target (err %v)", err)
	}
}

func TestRestoreErrors(t *testing.T) {
	t.Parallel()
	e := NewRepo(t)
	target := filepath.Join(e.Dir, "target")
	wantErrLine(t, e.Fails(1, "restore", "latest", "--target", target), "no snapshot")

	src := filepath.Join(e.Dir, "src")
	WriteFile(t, filepath.Join(src, "f"), []byte("f"))
	id := backupID(t, e, src)
	unknown := "0123abcd"
	if strings.HasPrefix(id, unknown) {
		unknown = "3210abcd"
	}
	wantErrLine(t, e.Fails(1, "restore", unknown, "--target", target), "no snapshot", unknown)
	wantErrLine(t, e.Fails(1, "restore", "latest"), "--target")
	e.Fails(1, "restore", "--target", target)
	e.Fails(1, "restore", "latest", "--target", target, "--host", "nosuchhost")
	if _, err := os.Stat(target); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("failed restores created the target (err %v)", err)
	}
}
