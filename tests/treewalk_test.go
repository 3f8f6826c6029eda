package tests

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// The walker records everything a restore must reproduce, for comparing a
// source tree with its restored copy. It works relative to open directory
// descriptors, so it reaches entries whose paths exceed PATH_MAX, and it
// stats each entry before reading it (with O_NOATIME), so its own reads
// leave the recorded access times alone.

// treeEntry is one entry as the walker saw it. Path is relative to the
// walked root ("." for the root), its elements joined by '/' as raw bytes.
type treeEntry struct {
	Path       string
	Type       string // file, dir, symlink, fifo, chardev, blockdev, socket
	Mode       uint32 // permission bits with setuid, setgid and sticky
	UID, GID   uint32
	Size       int64
	Mtime      unix.Timespec
	Atime      unix.Timespec
	Ino        uint64
	Nlink      uint64
	Rdev       uint64
	Blocks     int64 // 512-byte units allocated
	Hash       string
	Link       string
	Xattrs     map[string]string
	DataRanges [][2]int64 // a regular file's data extents (SEEK_DATA/SEEK_HOLE)
}

// walkedTree maps relative paths to entries.
type walkedTree map[string]*treeEntry

// walkTree records root and everything below it.
func walkTree(t testing.TB, root string) walkedTree {
	t.Helper()
	out := walkedTree{}
	var st unix.Stat_t
	if err := unix.Lstat(root, &st); err != nil {
		t.Fatalf("walk %s: %v", root, err)
	}
	e, err := entryOf(unix.AT_FDCWD, root, ".", &st)
	if err != nil {
		t.Fatalf("walk %s: %v", root, err)
	}
	out["."] = e
	if e.Type != "dir" {
		return out
	}
	fd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_NOATIME|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("walk %s: %v", root, err)
	}
	defer unix.Close(fd)
	if err := walkDir(fd, "", out); err != nil {
		t.Fatalf("walk %s: %v", root, err)
	}
	return out
}

func walkDir(dirfd int, prefix string, out walkedTree) error {
	names, err := walkDirNames(dirfd)
	if err != nil {
		return fmt.Errorf("%q: %w", prefix, err)
	}
	for _, name := range names {
		rel := prefix + name
		var st unix.Stat_t
		if err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fmt.Errorf("%q: lstat: %w", rel, err)
		}
		e, err := entryOf(dirfd, name, rel, &st)
		if err != nil {
			return fmt.Errorf("%q: %w", rel, err)
		}
		out[rel] = e
		if e.Type != "dir" {
			continue
		}
		fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_NOATIME|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("%q: open: %w", rel, err)
		}
		err = walkDir(fd, rel+"/", out)
		unix.Close(fd)
		if err != nil {
			return err
		}
	}
	return nil
}

func walkDirNames(fd int) ([]string, error) {
	dup, err := unix.Dup(fd)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(dup), "dir")
	defer f.Close()
	names, err := f.Readdirnames(-1)
	sort.Strings(names)
	return names, err
}

// entryOf fills an entry from st, then reads content, link target and
// xattrs of name in dirfd.
func entryOf(dirfd int, name, rel string, st *unix.Stat_t) (*treeEntry, error) {
	e := &treeEntry{
		Path: rel, Mode: st.Mode & 0o7777, UID: st.Uid, GID: st.Gid, Size: st.Size,
		Mtime: st.Mtim, Atime: st.Atim, Ino: st.Ino, Nlink: uint64(st.Nlink), Blocks: st.Blocks,
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		e.Type = "file"
	case unix.S_IFDIR:
		e.Type = "dir"
	case unix.S_IFLNK:
		e.Type = "symlink"
	case unix.S_IFIFO:
		e.Type = "fifo"
	case unix.S_IFCHR:
		e.Type, e.Rdev = "chardev", uint64(st.Rdev)
	case unix.S_IFBLK:
		e.Type, e.Rdev = "blockdev", uint64(st.Rdev)
	case unix.S_IFSOCK:
		e.Type = "socket"
	default:
		return nil, fmt.Errorf("unknown file type %o", st.Mode&unix.S_IFMT)
	}
	if e.Type == "dir" {
		e.Size = 0 // a directory's size is the filesystem's business
	}
	var err error
	switch e.Type {
	case "file":
		if err := readFileAt(dirfd, name, e); err != nil {
			return nil, err
		}
	case "symlink":
		buf := make([]byte, unix.PathMax)
		n, err := unix.Readlinkat(dirfd, name, buf)
		if err != nil {
			return nil, fmt.Errorf("readlink: %w", err)
		}
		e.Link = string(buf[:n])
	}
	if e.Xattrs, err = xattrsAt(dirfd, name); err != nil {
		return nil, err
	}
	return e, nil
}

func readFileAt(dirfd int, name string, e *treeEntry) error {
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NOATIME|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open: %w", err)
	}
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return fmt.Errorf("read: %w", err)
	}
	e.Hash = hex.EncodeToString(h.Sum(nil))
	for off := int64(0); off < e.Size; {
		start, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // only a hole is left
		}
		if err != nil {
			return fmt.Errorf("seek data: %w", err)
		}
		end, err := unix.Seek(fd, start, unix.SEEK_HOLE)
		if err != nil {
			return fmt.Errorf("seek hole: %w", err)
		}
		e.DataRanges = append(e.DataRanges, [2]int64{start, end})
		off = end
	}
	return nil
}

// xattrsAt lists name's extended attributes without following a symlink.
// /proc/self/fd names the directory, so the path stays short at any depth.
func xattrsAt(dirfd int, name string) (map[string]string, error) {
	p := name
	if dirfd != unix.AT_FDCWD {
		p = "/proc/self/fd/" + strconv.Itoa(dirfd) + "/" + name
	}
	size, err := unix.Llistxattr(p, nil)
	if errors.Is(err, unix.ENOTSUP) || size == 0 {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list xattrs: %w", err)
	}
	buf := make([]byte, size)
	if size, err = unix.Llistxattr(p, buf); err != nil {
		return nil, fmt.Errorf("list xattrs: %w", err)
	}
	out := map[string]string{}
	for _, key := range strings.Split(strings.TrimRight(string(buf[:size]), "\x00"), "\x00") {
		val := make([]byte, 64<<10)
		n, err := unix.Lgetxattr(p, key, val)
		if err != nil {
			return nil, fmt.Errorf("get xattr %s: %w", key, err)
		}
		out[key] = string(val[:n])
	}
	return out, nil
}

// dataBytes is how many bytes the data extents cover.
func (e *treeEntry) dataBytes() int64 {
	var n int64
	for _, r := range e.DataRanges {
		n += r[1] - r[0]
	}
	return n
}

// compareOptions say which fields a comparison leaves out.
type compareOptions struct {
	// NoAtime leaves access times out. Symlinks' are never compared:
	// reading a link target (as a backup and this walker must) moves it.
	NoAtime bool
	// Sparse checks that the copy's data extents stay within the
	// original's (both sides are on one filesystem, so block rounding is the
	// same) and that it allocates no more, give or take a few blocks of
	// extent metadata.
	Sparse bool
}

// allocSlack is how many more bytes a copy may allocate than its original:
// room for the filesystem's own extent blocks.
const allocSlack = 16 << 10

// compareTrees reports every difference between want (the original) and
// got (the copy), one error per path and field.
func compareTrees(t testing.TB, want, got walkedTree, opt compareOptions) {
	t.Helper()
	for _, s := range diffTrees(want, got, opt) {
		t.Error(s)
	}
}

// diffTrees lists the differences, each as "PATH: field: …".
func diffTrees(want, got walkedTree, opt compareOptions) []string {
	var problems []string
	add := func(path, format string, args ...any) {
		problems = append(problems, fmt.Sprintf("%s: %s", showPath(path), fmt.Sprintf(format, args...)))
	}
	for _, p := range sortedPaths(want) {
		w, g := want[p], got[p]
		if g == nil {
			add(p, "missing in the copy (a %s)", w.Type)
			continue
		}
		if w.Type != g.Type {
			add(p, "type: want %s, got %s", w.Type, g.Type)
			continue
		}
		if w.Mode != g.Mode {
			add(p, "mode: want %04o, got %04o", w.Mode, g.Mode)
		}
		if w.UID != g.UID || w.GID != g.GID {
			add(p, "owner: want %d:%d, got %d:%d", w.UID, w.GID, g.UID, g.GID)
		}
		if w.Size != g.Size {
			add(p, "size: want %d, got %d", w.Size, g.Size)
		}
		if w.Mtime != g.Mtime {
			add(p, "mtime: want %s, got %s", showTime(w.Mtime), showTime(g.Mtime))
		}
		if !opt.NoAtime && w.Type != "symlink" && w.Atime != g.Atime {
			add(p, "atime: want %s, got %s", showTime(w.Atime), showTime(g.Atime))
		}
		if w.Hash != g.Hash {
			add(p, "content: sha256 want %.12s…, got %.12s…", w.Hash, g.Hash)
		}
		if w.Link != g.Link {
			add(p, "link target: want %q, got %q", w.Link, g.Link)
		}
		if w.Rdev != g.Rdev {
			add(p, "device number: want %d:%d, got %d:%d", unix.Major(w.Rdev), unix.Minor(w.Rdev), unix.Major(g.Rdev), unix.Minor(g.Rdev))
		}
		if !sameXattrs(w.Xattrs, g.Xattrs) {
			add(p, "xattrs: want %q, got %q", w.Xattrs, g.Xattrs)
		}
		if opt.Sparse && w.Type == "file" {
			if extra := bytesOutside(g.DataRanges, w.DataRanges); extra > 0 {
				add(p, "sparseness: %d bytes are data in the copy but holes in the original (data %v, original %v)",
					extra, g.DataRanges, w.DataRanges)
			}
			if g.Blocks*512 > w.Blocks*512+allocSlack {
				add(p, "sparseness: %d bytes allocated, the original has %d", g.Blocks*512, w.Blocks*512)
			}
		}
	}
	for _, p := range sortedPaths(got) {
		if want[p] == nil {
			add(p, "in the copy but not in the original (a %s)", got[p].Type)
		}
	}
	// Hard links: each name must share its inode with exactly the names it
	// shares it with in the original.
	wg, gg := linkGroups(want), linkGroups(got)
	for _, p := range sortedPaths(want) {
		if got[p] == nil || want[p].Type == "dir" {
			continue
		}
		if w, g := wg[p], gg[p]; strings.Join(w, "\x00") != strings.Join(g, "\x00") {
			add(p, "hard links: want the inode shared with %s, got %s", showPaths(w), showPaths(g))
		}
	}
	return problems
}

// linkGroups maps each non-directory path to the sorted paths sharing its inode.
func linkGroups(tr walkedTree) map[string][]string {
	byIno := map[uint64][]string{}
	for p, e := range tr {
		if e.Type != "dir" {
			byIno[e.Ino] = append(byIno[e.Ino], p)
		}
	}
	out := map[string][]string{}
	for _, ps := range byIno {
		sort.Strings(ps)
		for _, p := range ps {
			out[p] = ps
		}
	}
	return out
}

// bytesOutside is how many bytes of ranges a lie outside every range of b.
func bytesOutside(a, b [][2]int64) int64 {
	var n int64
	for _, r := range a {
		n += r[1] - r[0]
		for _, s := range b {
			lo, hi := max(r[0], s[0]), min(r[1], s[1])
			if hi > lo {
				n -= hi - lo
			}
		}
	}
	return n
}

func sameXattrs(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func sortedPaths(tr walkedTree) []string {
	out := make([]string, 0, len(tr))
	for p := range tr {
		out = append(out, p)
	}
	sort.Strings(out)
	return out
}

// showPath quotes a path so odd bytes are visible, and shortens deep ones.
func showPath(p string) string {
	if len(p) > 200 {
		return fmt.Sprintf("%q…(%d bytes)…%q", p[:60], len(p), p[len(p)-80:])
	}
	return strconv.Quote(p)
}

func showPaths(ps []string) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = showPath(p)
	}
	return "[" + strings.Join(s, " ") + "]"
}

func showTime(ts unix.Timespec) string {
	return fmt.Sprintf("%d.%09d", ts.Sec, ts.Nsec)
}

// The walker must see every field it is trusted to compare: each change
// below has to show up as a difference naming the path and the field.
func TestTreeWalkerSeesEveryField(t *testing.T) {
	dir := t.TempDir()
	src := buildOddTree(t, dir, false)
	root := src.root
	sparse := filepath.Join(root, "holes")
	f, err := os.Create(sparse)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(4 << 20); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("island"), 1<<20); err != nil {
		t.Fatal(err)
	}
	f.Close()

	base := walkTree(t, root)
	if d := diffTrees(base, walkTree(t, root), compareOptions{Sparse: true}); len(d) > 0 {
		t.Fatalf("walking twice gives differences (the walker changes what it reads):\n%s", strings.Join(d, "\n"))
	}

	p := func(rel string) string { return filepath.Join(root, rel) }
	keepTimes := func(rel string, fn func()) {
		t.Helper()
		e := base[rel]
		fn()
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, p(rel), []unix.Timespec{e.Atime, e.Mtime}, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			t.Fatal(err)
		}
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	deepLeaf := deepRel() + "/leaf"
	changes := []struct {
		rel, field string
		change     func()
	}{
		{"sticky-file", "mode", func() { must(unix.Chmod(p("sticky-file"), 0o644)) }},
		{"setgid", "owner", func() {
			keepTimes("setgid", func() { must(os.Lchown(p("setgid"), 4321, 8765)); must(unix.Chmod(p("setgid"), 0o2750)) })
		}},
		{newlineName, "content", func() {
			keepTimes(newlineName, func() { must(os.WriteFile(p(newlineName), []byte("NEWLINE IN THE NAME\n"), 0)) })
		}},
		{"sticky-dir", "mtime", func() {
			e := base["sticky-dir"]
			must(unix.UtimesNanoAt(unix.AT_FDCWD, p("sticky-dir"), []unix.Timespec{e.Atime, tspec(e.Mtime.Sec, e.Mtime.Nsec+1)}, 0))
		}},
		{"empty-dir", "atime", func() {
			e := base["empty-dir"]
			must(unix.UtimesNanoAt(unix.AT_FDCWD, p("empty-dir"), []unix.Timespec{tspec(e.Atime.Sec, e.Atime.Nsec+1), e.Mtime}, 0))
		}},
		{"link-dangling", "link target", func() {
			keepTimes("link-dangling", func() { must(os.Remove(p("link-dangling"))); must(os.Symlink("does/not/exist!", p("link-dangling"))) })
		}},
		{"hl/two", "hard links", func() {
			keepTimes("hl/two", func() {
				b, err := os.ReadFile(p("hl/two"))
				must(err)
				must(os.Remove(p("hl/two")))
				must(os.WriteFile(p("hl/two"), b, 0o644))
				must(unix.Setxattr(p("hl/two"), "user.linked", []byte("shared by three names"), 0))
			})
			keepTimes("hl", func() {})
		}},
		{"small.txt", "xattrs", func() { must(unix.Removexattr(p("small.txt"), "user.comment")) }},
		{"holes", "sparseness", func() {
			keepTimes("holes", func() {
				f, err := os.OpenFile(sparse, os.O_WRONLY, 0)
				must(err)
				_, err = f.WriteAt(make([]byte, 256<<10), 2<<20)
				must(err)
				must(f.Close())
			})
		}},
		{deepLeaf, "mtime", func() {
			fd, err := unix.Open(p("deep"), unix.O_RDONLY|unix.O_DIRECTORY, 0)
			must(err)
			for i := range deepLevels {
				next, err := unix.Openat(fd, deepName(i), unix.O_RDONLY|unix.O_DIRECTORY, 0)
				unix.Close(fd)
				must(err)
				fd = next
			}
			e := base[deepLeaf]
			must(unix.UtimesNanoAt(fd, "leaf", []unix.Timespec{e.Atime, tspec(e.Mtime.Sec+1, e.Mtime.Nsec)}, 0))
			unix.Close(fd)
		}},
		{"empty", "type", func() { must(os.Remove(p("empty"))); must(os.Mkdir(p("empty"), 0o644)) }},
		{"fifo", "missing", func() { must(os.Remove(p("fifo"))) }},
		{"extra", "in the copy", func() { must(os.WriteFile(p("extra"), nil, 0o644)) }},
	}
	for _, c := range changes {
		if c.field == "owner" && os.Geteuid() != 0 {
			continue
		}
		c.change()
		diff := diffTrees(base, walkTree(t, root), compareOptions{Sparse: true})
		want := showPath(c.rel) + ": " + c.field
		found := false
		for _, d := range diff {
			found = found || strings.HasPrefix(d, want)
		}
		if !found {
			t.Errorf("after changing %s of %s the walker reports:\n%s", c.field, showPath(c.rel), strings.Join(diff, "\n"))
		}
	}
}
