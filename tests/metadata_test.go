package tests

import (
	"archive/tar"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Owner and group of the entries that do not belong to root.
const (
	oddUID = 1234
	oddGID = 5678
)

// Names that are legal on Linux but trip up code that treats names as text
// or paths as short.
var (
	nonUTF8Name = "\xff\xfe"
	newlineName = "new\nline"
	longName    = strings.Repeat("n", 255)
)

// deepLevels × deepNameLen bytes is far beyond PATH_MAX (4096).
const (
	deepLevels  = 40
	deepNameLen = 200
)

func deepName(i int) string {
	return fmt.Sprintf("%02d", i) + strings.Repeat("d", deepNameLen-2)
}

// deepRel is the relative path of the deepest directory.
func deepRel() string {
	els := []string{"deep"}
	for i := range deepLevels {
		els = append(els, deepName(i))
	}
	return strings.Join(els, "/")
}

// oddTree is a source tree with every kind of entry cairn must keep.
type oddTree struct {
	root  string
	files map[string][]byte // regular files whose content the test knows, by relative path
	// times set on purpose, by relative path: {atime, mtime}
	times map[string][2]unix.Timespec
}

// treeBuilder makes entries and remembers what to set last: times go on
// after everything else, directories after their contents.
type treeBuilder struct {
	t        *testing.T
	tr       *oddTree
	dirTimes []string                    // directories, in creation order
	pending  map[string][2]unix.Timespec // times finish sets
}

func (b *treeBuilder) path(rel string) string { return filepath.Join(b.tr.root, rel) }

func (b *treeBuilder) file(rel string, data []byte, mode os.FileMode) {
	b.t.Helper()
	p := b.path(rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		b.t.Fatal(err)
	}
	if err := os.WriteFile(p, data, 0o600); err != nil {
		b.t.Fatal(err)
	}
	b.chmod(rel, mode)
	b.tr.files[rel] = data
}

func (b *treeBuilder) dir(rel string, mode os.FileMode) {
	b.t.Helper()
	if err := os.MkdirAll(b.path(rel), 0o755); err != nil {
		b.t.Fatal(err)
	}
	b.chmod(rel, mode)
	b.dirTimes = append(b.dirTimes, rel)
}

// chmod sets all twelve mode bits (os.Chmod would drop the special ones).
func (b *treeBuilder) chmod(rel string, mode os.FileMode) {
	b.t.Helper()
	if err := unix.Chmod(b.path(rel), uint32(mode)); err != nil {
		b.t.Fatal(err)
	}
}

// chown gives rel to oddUID:oddGID and then sets mode again, since a chown
// clears setuid and setgid.
func (b *treeBuilder) chown(rel string, mode os.FileMode) {
	b.t.Helper()
	if os.Geteuid() != 0 {
		return
	}
	if err := unix.Lchown(b.path(rel), oddUID, oddGID); err != nil {
		b.t.Fatal(err)
	}
	if mode != 0 {
		b.chmod(rel, mode)
	}
}

func (b *treeBuilder) symlink(rel, target string) {
	b.t.Helper()
	if err := os.Symlink(target, b.path(rel)); err != nil {
		b.t.Fatal(err)
	}
}

func (b *treeBuilder) link(from, to string) {
	b.t.Helper()
	if err := os.Link(b.path(from), b.path(to)); err != nil {
		b.t.Fatal(err)
	}
}

// xattr sets an extended attribute; a filesystem or entry that cannot hold
// it skips this one case.
func (b *treeBuilder) xattr(rel, name string, value []byte) {
	b.t.Helper()
	err := unix.Lsetxattr(b.path(rel), name, value, 0)
	switch {
	case err == nil:
	case errors.Is(err, unix.ENOTSUP), errors.Is(err, unix.EPERM):
		b.t.Logf("skipping xattr %s on %q: %v", name, rel, err)
	default:
		b.t.Fatalf("set xattr %s on %q: %v", name, rel, err)
	}
}

func (b *treeBuilder) node(rel string, mode uint32, dev int) {
	b.t.Helper()
	err := unix.Mknod(b.path(rel), mode, dev)
	switch {
	case err == nil:
	case errors.Is(err, unix.EPERM):
		b.t.Logf("skipping %q: mknod: %v", rel, err)
	default:
		b.t.Fatalf("mknod %q: %v", rel, err)
	}
}

// setTimes records times for rel; finish applies them.
func (b *treeBuilder) setTimes(rel string, atime, mtime unix.Timespec) {
	b.tr.times[rel] = [2]unix.Timespec{atime, mtime}
	b.pending[rel] = b.tr.times[rel]
}

// finish applies the recorded times: files first, then directories from
// the deepest up, so that nothing written later moves a directory's mtime.
func (b *treeBuilder) finish() {
	b.t.Helper()
	isDir := map[string]bool{}
	for _, d := range b.dirTimes {
		isDir[d] = true
	}
	apply := func(rel string) {
		ts, ok := b.pending[rel]
		if !ok {
			return
		}
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, b.path(rel), ts[:], unix.AT_SYMLINK_NOFOLLOW); err != nil {
			b.t.Fatalf("set times of %q: %v", rel, err)
		}
	}
	for rel := range b.pending {
		if !isDir[rel] {
			apply(rel)
		}
	}
	for i := len(b.dirTimes) - 1; i >= 0; i-- {
		apply(b.dirTimes[i])
	}
}

func tspec(sec, nsec int64) unix.Timespec { return unix.Timespec{Sec: sec, Nsec: nsec} }

// sparseSize and sparseIslands describe the sparse file: islands at odd
// offsets and lengths, one longer than the minimum chunk, so that chunk
// boundaries fall in the middle of filesystem blocks.
const sparseSize = 64 << 20

var sparseIslands = [][2]int64{ // offset, length
	{0, 1000},
	{1<<20 + 100, 700<<10 + 37},
	{20 << 20, 64 << 10},
	{40<<20 + 12345, 3000},
	{sparseSize - 5, 5},
}

// buildOddTree makes the source tree in dir/src. With big set it adds a
// multi-MiB random file and the 64 MiB sparse file.
func buildOddTree(t *testing.T, dir string, big bool) *oddTree {
	t.Helper()
	tr := &oddTree{root: filepath.Join(dir, "src"), files: map[string][]byte{}, times: map[string][2]unix.Timespec{}}
	b := &treeBuilder{t: t, tr: tr, pending: map[string][2]unix.Timespec{}}
	b.dir(".", 0o755)
	rnd := rand.New(rand.NewSource(42))

	// Regular files: empty, small, with special mode bits, owned by others.
	b.file("empty", nil, 0o644)
	b.file("small.txt", []byte("hello, cairn\n"), 0o640)
	b.chown("small.txt", 0o640)
	b.file("setuid", []byte("#!/bin/sh\n"), 0o4755)
	b.chown("setuid", 0o4755)
	b.file("setgid", []byte("g\n"), 0o2750)
	b.chown("setgid", 0o2750)
	b.file("sticky-file", []byte("t\n"), 0o1644)
	b.file("no-perms", []byte("none\n"), 0o000)
	if big {
		data := make([]byte, 5<<20+333)
		rnd.Read(data)
		b.file("big.bin", data, 0o600)
		b.setTimes("big.bin", tspec(5000000000, 999999999), tspec(4102444800+12345, 987654321)) // after 2038
		b.sparse("sparse.img", rnd)
	}
	b.setTimes("small.txt", tspec(-987654321, 1), tspec(-1234567890, 123456789)) // before 1970
	b.setTimes("empty", tspec(1, 0), tspec(0, 999999999))
	b.setTimes("setuid", tspec(1700000000, 5), tspec(1600000000, 500000000))

	// Directories: special bits, other owners, read-only, empty, nested empty.
	b.dir("sticky-dir", 0o3775)
	b.chown("sticky-dir", 0o3775)
	b.file("sticky-dir/inside", []byte("inside\n"), 0o644)
	b.dir("readonly-dir", 0o755)
	b.file("readonly-dir/kept", []byte("read-only parent\n"), 0o444)
	b.chmod("readonly-dir", 0o500)
	b.dir("empty-dir", 0o710)
	b.dir("nested", 0o755)
	b.dir("nested/empty", 0o755)
	b.dir("nested/empty/deeper", 0o700)
	b.setTimes("sticky-dir", tspec(-100, 7), tspec(-200, 8))
	b.setTimes("readonly-dir", tspec(2000000000, 1), tspec(1999999999, 2))
	b.setTimes("empty-dir", tspec(1000, 1000), tspec(9000000000, 123))
	b.setTimes("nested/empty/deeper", tspec(12, 34), tspec(56, 78))
	b.setTimes(".", tspec(1111111111, 111111111), tspec(1222222222, 222222222))

	// Symlinks: relative, absolute, dangling, owned by others, with times.
	b.symlink("link-rel", "small.txt")
	b.symlink("link-abs", "/etc/passwd")
	b.symlink("link-dangling", "does/not/exist")
	b.symlink("link-dir", "sticky-dir")
	b.chown("link-rel", 0)
	b.setTimes("link-rel", tspec(1300000000, 13), tspec(1400000000, 14))
	b.setTimes("link-dangling", tspec(-5, 5), tspec(-6, 6))

	// Hard links: three names in one directory, two across directories.
	b.file("hl/one", []byte("one inode, three names\n"), 0o644)
	b.link("hl/one", "hl/two")
	b.link("hl/one", "hl/three")
	b.dir("hl", 0o755)
	b.file("x/cross", []byte("linked across directories\n"), 0o600)
	b.dir("x", 0o755)
	b.dir("y", 0o755)
	b.link("x/cross", "y/cross2")
	b.chown("x/cross", 0o600)

	// Special files.
	if err := unix.Mkfifo(b.path("fifo"), 0o620); err != nil {
		t.Fatal(err)
	}
	b.setTimes("fifo", tspec(1500000000, 1), tspec(1500000001, 2))
	b.node("chardev", unix.S_IFCHR|0o640, int(unix.Mkdev(1, 3)))
	b.node("blockdev", unix.S_IFBLK|0o600, int(unix.Mkdev(7, 200)))

	// Extended attributes on files, directories and a symlink.
	b.xattr("small.txt", "user.comment", []byte("a comment"))
	b.xattr("small.txt", "user.empty", nil)
	b.xattr("small.txt", "user.binary", []byte{0, 1, 2, 0xff, '\n'})
	b.xattr("sticky-dir", "user.dir", []byte("on a directory"))
	b.xattr("empty-dir", "user.dir2", []byte("on an empty directory"))
	b.xattr("hl/one", "user.linked", []byte("shared by three names"))
	b.xattr("link-rel", "trusted.cairn", []byte("on a symlink"))
	b.xattr("setuid", "trusted.other", []byte("with setuid"))

	// Names as byte strings.
	b.file(nonUTF8Name, []byte("not UTF-8\n"), 0o644)
	b.file(newlineName, []byte("newline in the name\n"), 0o644)
	b.file(longName, []byte("255 bytes of name\n"), 0o644)
	b.dir("odd-"+nonUTF8Name, 0o755)
	b.file("odd-"+nonUTF8Name+"/"+newlineName, []byte("both\n"), 0o644)
	b.xattr(nonUTF8Name, "user.name\xff", []byte("odd xattr name"))
	b.setTimes(nonUTF8Name, tspec(3, 3), tspec(4, 4))

	b.deep()
	b.finish()
	return tr
}

// sparse writes the sparse file: a 64 MiB hole with islands of data.
func (b *treeBuilder) sparse(rel string, rnd *rand.Rand) {
	b.t.Helper()
	f, err := os.Create(b.path(rel))
	if err != nil {
		b.t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(sparseSize); err != nil {
		b.t.Fatal(err)
	}
	for _, is := range sparseIslands {
		data := make([]byte, is[1])
		rnd.Read(data)
		if _, err := f.WriteAt(data, is[0]); err != nil {
			b.t.Fatal(err)
		}
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		b.t.Fatal(err)
	}
	if st.Blocks*512 >= sparseSize/4 {
		b.t.Fatalf("the filesystem did not keep %s sparse (%d bytes allocated)", rel, st.Blocks*512)
	}
}

// deep makes a directory chain of several KiB with *at calls (no path of
// that length can be named in one call) and a file, a hard link to it and
// a symlink at its end.
func (b *treeBuilder) deep() {
	b.t.Helper()
	b.dir("deep", 0o755)
	fd, err := unix.Open(b.path("deep"), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		b.t.Fatal(err)
	}
	for i := range deepLevels {
		name := deepName(i)
		if err := unix.Mkdirat(fd, name, 0o751); err != nil {
			b.t.Fatal(err)
		}
		next, err := unix.Openat(fd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		unix.Close(fd)
		if err != nil {
			b.t.Fatal(err)
		}
		fd = next
	}
	defer unix.Close(fd)
	leaf, err := unix.Openat(fd, "leaf", unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC, 0o644)
	if err != nil {
		b.t.Fatal(err)
	}
	data := []byte("at the bottom of a very long path\n")
	_, err = unix.Write(leaf, data)
	unix.Close(leaf)
	if err != nil {
		b.t.Fatal(err)
	}
	if err := unix.Symlinkat("leaf", fd, "leaf-link"); err != nil {
		b.t.Fatal(err)
	}
	if err := unix.Linkat(fd, "leaf", fd, "leaf-hardlink", 0); err != nil {
		b.t.Fatal(err)
	}
	when := []unix.Timespec{tspec(-2000000000, 1), tspec(7000000000, 2)}
	if err := unix.UtimesNanoAt(fd, "leaf", when, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		b.t.Fatal(err)
	}
	b.tr.files[deepRel()+"/leaf"] = data
	b.tr.files[deepRel()+"/leaf-hardlink"] = data
	b.tr.times[deepRel()+"/leaf"] = [2]unix.Timespec{when[0], when[1]}
}

// countNonDirs counts the entries a backup counts as files.
func countNonDirs(tr walkedTree) int {
	n := 0
	for _, e := range tr {
		if e.Type != "dir" {
			n++
		}
	}
	return n
}

func jsonInt(t *testing.T, m map[string]any, key string) int64 {
	t.Helper()
	v, ok := m[key].(float64)
	if !ok {
		t.Fatalf("no number %q in %v", key, m)
	}
	return int64(v)
}

func TestMetadataRoundTrip(t *testing.T) {
	e := NewRepo(t)
	src := buildOddTree(t, e.Dir, true)
	if os.Geteuid() != 0 {
		t.Log("not root: owners other than root are not set, devices are skipped")
	}

	first := Summary(t, e.Must("backup", "--json", src.root).Stdout)
	firstID, _ := first["snapshot_id"].(string)
	if len(firstID) != 64 {
		t.Fatalf("backup --json: snapshot_id %v is not a full id", first["snapshot_id"])
	}
	before := walkTree(t, src.root)
	if n := countNonDirs(before); jsonInt(t, first, "files_new") != int64(n) {
		t.Errorf("first backup: files_new = %d, the tree has %d non-directories", jsonInt(t, first, "files_new"), n)
	}

	// Nothing changed: nothing is read again or stored.
	second := Summary(t, e.Must("backup", "--json", src.root).Stdout)
	if n := countNonDirs(before); jsonInt(t, second, "files_unmodified") != int64(n) ||
		jsonInt(t, second, "files_new") != 0 || jsonInt(t, second, "files_changed") != 0 {
		t.Errorf("second backup of an unchanged tree of %d files: new %d, changed %d, unmodified %d",
			n, jsonInt(t, second, "files_new"), jsonInt(t, second, "files_changed"), jsonInt(t, second, "files_unmodified"))
	}
	if added := jsonInt(t, second, "data_added"); added > 64<<10 {
		t.Errorf("second backup of an unchanged tree added %d bytes", added)
	}

	dst := filepath.Join(e.Dir, "dst")
	// The first snapshot holds the tree as built: reading a symlink (as a
	// backup must) moves its atime, so the second one holds other atimes.
	e.Must("restore", firstID, "--target", dst)
	copyRoot := filepath.Join(dst, src.root)
	after := walkTree(t, copyRoot)
	source := walkTree(t, src.root)
	compareTrees(t, source, after, compareOptions{Sparse: true})
	// The backup read the source's symlinks, which moved their atimes; the
	// copy must hold the times the test set.
	checkTimes(t, src, after)

	if sp := after["sparse.img"]; sp != nil {
		if sp.Blocks*512 >= sparseSize/4 {
			t.Errorf("sparse.img: %d bytes allocated in the copy of a %d-byte file with %d bytes of data",
				sp.Blocks*512, sparseSize, source["sparse.img"].dataBytes())
		}
	}
	// The walker compares what it found; make sure it found the odd entries.
	for _, rel := range []string{nonUTF8Name, newlineName, longName, deepRel() + "/leaf", "sparse.img", "fifo", "hl/three"} {
		if source[rel] == nil {
			t.Errorf("the walker did not find %s in the source", showPath(rel))
		}
	}

	// A change that keeps size and mtime still changes ctime: the next
	// backup must read the file again.
	const rel = "small.txt"
	p := filepath.Join(src.root, rel)
	old := source[rel]
	changed := []byte("HELLO, CAIRN\n")
	if len(changed) != len(src.files[rel]) {
		t.Fatal("the changed content must keep the size")
	}
	if err := os.WriteFile(p, changed, 0); err != nil {
		t.Fatal(err)
	}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, []unix.Timespec{old.Atime, old.Mtime}, 0); err != nil {
		t.Fatal(err)
	}
	third := Summary(t, e.Must("backup", "--json", src.root).Stdout)
	if n := countNonDirs(before); jsonInt(t, third, "files_changed") != 1 || jsonInt(t, third, "files_new") != 0 ||
		jsonInt(t, third, "files_unmodified") != int64(n-1) {
		t.Errorf("backup after one same-size, same-mtime change: new %d, changed %d, unmodified %d (want 0, 1, %d)",
			jsonInt(t, third, "files_new"), jsonInt(t, third, "files_changed"), jsonInt(t, third, "files_unmodified"), n-1)
	}
	if got := e.Must("dump", "latest", p).Stdout; got != string(changed) {
		t.Errorf("dump of %s after the change: %q, want %q", rel, got, changed)
	}
}

// checkTimes compares the times the builder set with the copy.
func checkTimes(t *testing.T, src *oddTree, got walkedTree) {
	t.Helper()
	for rel, want := range src.times {
		g := got[rel]
		if g == nil {
			continue // reported as missing already
		}
		if g.Atime != want[0] {
			t.Errorf("%s: atime: want %s (as set), got %s", showPath(rel), showTime(want[0]), showTime(g.Atime))
		}
		if g.Mtime != want[1] {
			t.Errorf("%s: mtime: want %s (as set), got %s", showPath(rel), showTime(want[1]), showTime(g.Mtime))
		}
	}
}

func TestDumpAndLsOddNames(t *testing.T) {
	e := NewRepo(t)
	src := buildOddTree(t, e.Dir, false)
	e.Must("backup", src.root)
	source := walkTree(t, src.root)

	// dump of single files, odd names and a path beyond PATH_MAX included.
	for rel, data := range src.files {
		got := e.Must("dump", "latest", filepath.Join(src.root, rel)).Stdout
		if got != string(data) {
			t.Errorf("dump %s: %d bytes, want %d bytes %q", showPath(rel), len(got), len(data), data)
		}
	}

	// ls --json: one line per entry with the exact path bytes.
	lines := JSONLines(t, e.Must("ls", "--json", "latest").Stdout)
	listed := map[string]map[string]any{}
	for _, m := range lines {
		p, _ := m["path"].(string)
		if b, ok := m["path_b64"].(string); ok && b != "" {
			raw, err := base64.StdEncoding.DecodeString(b)
			if err != nil {
				t.Fatalf("ls --json: bad path_b64 %q: %v", b, err)
			}
			p = string(raw)
		}
		if _, dup := listed[p]; dup {
			t.Errorf("ls --json lists %s twice", showPath(p))
		}
		listed[p] = m
	}
	types := map[string]string{"file": "file", "dir": "dir", "symlink": "symlink", "fifo": "fifo",
		"chardev": "chardev", "blockdev": "dev"}
	under := 0
	for p := range listed {
		if p == src.root || strings.HasPrefix(p, src.root+"/") {
			under++
		}
	}
	if under != len(source) {
		t.Errorf("ls --json lists %d entries under %s, the source has %d", under, src.root, len(source))
	}
	for _, rel := range sortedPaths(source) {
		s := source[rel]
		p := src.root
		if rel != "." {
			p += "/" + rel
		}
		m := listed[p]
		if m == nil {
			t.Errorf("ls --json: %s is missing", showPath(p))
			continue
		}
		if m["type"] != types[s.Type] {
			t.Errorf("ls --json %s: type %v, want %s", showPath(rel), m["type"], types[s.Type])
		}
		if int64(s.Mode) != jsonInt(t, m, "mode") {
			t.Errorf("ls --json %s: mode %o, want %o", showPath(rel), jsonInt(t, m, "mode"), s.Mode)
		}
		if int64(s.UID) != jsonInt(t, m, "uid") || int64(s.GID) != jsonInt(t, m, "gid") {
			t.Errorf("ls --json %s: owner %d:%d, want %d:%d", showPath(rel), jsonInt(t, m, "uid"), jsonInt(t, m, "gid"), s.UID, s.GID)
		}
		if s.Type == "file" && jsonInt(t, m, "size") != s.Size {
			t.Errorf("ls --json %s: size %d, want %d", showPath(rel), jsonInt(t, m, "size"), s.Size)
		}
		mt, err := time.Parse(time.RFC3339Nano, fmt.Sprint(m["mtime"]))
		if err != nil {
			t.Errorf("ls --json %s: mtime %v: %v", showPath(rel), m["mtime"], err)
		} else if mt.Unix() != s.Mtime.Sec || int64(mt.Nanosecond()) != s.Mtime.Nsec {
			t.Errorf("ls --json %s: mtime %s, want %s", showPath(rel), mt.Format(time.RFC3339Nano), showTime(s.Mtime))
		}
	}

	// dump of the directory as tar: the same names, contents and targets.
	r := e.Run("dump", "latest", src.root)
	if r.Code != 0 {
		t.Fatalf("dump of the source directory as tar: %s", r)
	}
	prefix := strings.TrimPrefix(src.root, "/")
	seen := map[string]bool{}
	tarR := tar.NewReader(strings.NewReader(r.Stdout))
	for {
		hdr, err := tarR.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("dump tar: %v", err)
		}
		name := strings.TrimSuffix(hdr.Name, "/")
		if name == prefix {
			name = "."
		} else if !strings.HasPrefix(name, prefix+"/") {
			t.Errorf("dump tar: entry %s is not below %s", showPath(hdr.Name), prefix)
			continue
		} else {
			name = strings.TrimPrefix(name, prefix+"/")
		}
		seen[name] = true
		s := source[name]
		if s == nil {
			t.Errorf("dump tar: %s is not in the source", showPath(name))
			continue
		}
		switch {
		case s.Type == "file" && hdr.Typeflag == tar.TypeReg:
			h := sha256.New()
			if _, err := io.Copy(h, tarR); err != nil {
				t.Fatal(err)
			}
			if hex.EncodeToString(h.Sum(nil)) != s.Hash {
				t.Errorf("dump tar: %s: content differs", showPath(name))
			}
		case s.Type == "symlink" && hdr.Typeflag == tar.TypeSymlink:
			if hdr.Linkname != s.Link {
				t.Errorf("dump tar: %s: link %q, want %q", showPath(name), hdr.Linkname, s.Link)
			}
		case s.Type == "dir" && hdr.Typeflag == tar.TypeDir,
			s.Type == "fifo" && hdr.Typeflag == tar.TypeFifo,
			s.Type == "chardev" && hdr.Typeflag == tar.TypeChar,
			s.Type == "blockdev" && hdr.Typeflag == tar.TypeBlock:
		default:
			t.Errorf("dump tar: %s: type flag %q for a %s", showPath(name), hdr.Typeflag, s.Type)
		}
		if hdr.Mode&0o7777 != int64(s.Mode) && s.Type != "symlink" {
			t.Errorf("dump tar: %s: mode %o, want %o", showPath(name), hdr.Mode, s.Mode)
		}
	}
	for _, rel := range sortedPaths(source) {
		if !seen[rel] {
			t.Errorf("dump tar: %s is missing", showPath(rel))
		}
	}
}
