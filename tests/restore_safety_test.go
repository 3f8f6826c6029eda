package tests

import (
	"archive/tar"
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cairn-backup/cairn/index"
	"github.com/cairn-backup/cairn/pack"
	"github.com/cairn-backup/cairn/repo"
	"github.com/cairn-backup/cairn/snapshot"
)

// treeWriter stores hand-made trees, as a tampered or hostile repository
// could hold them: nodes are kept in the order given and names unchecked.
type treeWriter struct {
	t     *testing.T
	ctx   context.Context
	store *pack.Store
	ino   uint64
}

var craftedTime = time.Unix(1600000000, 0).UTC()

func (w *treeWriter) tree(nodes ...*snapshot.Node) repo.ID {
	w.t.Helper()
	if nodes == nil {
		nodes = []*snapshot.Node{}
	}
	b, err := json.Marshal(snapshot.Tree{Nodes: nodes})
	if err != nil {
		w.t.Fatal(err)
	}
	id, _, err := w.store.SaveBlob(w.ctx, repo.TreeBlob, b)
	if err != nil {
		w.t.Fatal(err)
	}
	return id
}

func (w *treeWriter) node(name, typ string, mode uint32) *snapshot.Node {
	w.ino++
	return &snapshot.Node{Name: snapshot.Name(name), Type: typ, Mode: mode, ModTime: craftedTime,
		ATime: craftedTime, CTime: craftedTime, Inode: w.ino, DeviceID: 1, Links: 1}
}

func (w *treeWriter) file(name, content string) *snapshot.Node {
	w.t.Helper()
	n := w.node(name, snapshot.TypeFile, 0o644)
	id, _, err := w.store.SaveBlob(w.ctx, repo.DataBlob, []byte(content))
	if err != nil {
		w.t.Fatal(err)
	}
	n.Content, n.Size = []repo.ID{id}, uint64(len(content))
	return n
}

// hardlink makes a file node that claims to share inode ino with others.
func (w *treeWriter) hardlink(name, content string, ino uint64) *snapshot.Node {
	n := w.file(name, content)
	n.Inode, n.Links = ino, 2
	return n
}

func (w *treeWriter) dir(name string, nodes ...*snapshot.Node) *snapshot.Node {
	n := w.node(name, snapshot.TypeDir, 0o755)
	id := w.tree(nodes...)
	n.Subtree = &id
	return n
}

func (w *treeWriter) symlink(name, target string) *snapshot.Node {
	n := w.node(name, snapshot.TypeSymlink, 0o777)
	n.Link = snapshot.Name(target)
	return n
}

// craftSnapshots writes one snapshot per root tree that build returns,
// through the library, into e's repository; it returns their ids by case.
func craftSnapshots(t *testing.T, e *Env, build func(w *treeWriter) map[string]repo.ID) map[string]string {
	t.Helper()
	ctx := context.Background()
	r := e.OpenRepo()
	idx, err := index.Load(ctx, r, index.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer idx.Close()
	store := pack.NewStore(r, idx)
	var roots map[string]repo.ID
	err = store.WithUploader(ctx, pack.Options{}, func(ctx context.Context) error {
		roots = build(&treeWriter{t: t, ctx: ctx, store: store, ino: 1000})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]string{}
	for name, root := range roots {
		sn := &snapshot.Snapshot{Time: time.Now(), Tree: root, Paths: []string{"/" + name},
			Hostname: "crafted", Username: "test", Tags: []string{name}}
		id, err := snapshot.Save(ctx, r, sn)
		if err != nil {
			t.Fatal(err)
		}
		ids[name] = id.String()
	}
	return ids
}

// safetyArea is a directory with things a restore must never touch: a
// sentinel directory that must stay empty and files that must stay as
// they are.
type safetyArea struct {
	root    string
	outside string
}

func newSafetyArea(t *testing.T, dir string) *safetyArea {
	t.Helper()
	a := &safetyArea{root: filepath.Join(dir, "area")}
	a.outside = filepath.Join(a.root, "outside")
	WriteFile(t, filepath.Join(a.outside, "victim"), []byte("outside file\n"))
	WriteFile(t, filepath.Join(a.outside, "victim-dir", "f1"), []byte("outside f1\n"))
	WriteFile(t, filepath.Join(a.outside, "victim-g"), []byte("outside g\n"))
	WriteFile(t, filepath.Join(a.outside, "victim-h"), []byte("outside h\n"))
	for _, d := range []string{"sentinel", "anc"} {
		if err := os.MkdirAll(filepath.Join(a.outside, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return a
}

// fingerprint records the area without target (nor anything below it).
func (a *safetyArea) fingerprint(t *testing.T, target string) walkedTree {
	t.Helper()
	rel, err := filepath.Rel(a.root, target)
	if err != nil || strings.HasPrefix(rel, "..") {
		t.Fatalf("target %s is not in %s", target, a.root)
	}
	tr := walkTree(t, a.root)
	for p := range tr {
		if p == rel || strings.HasPrefix(p, rel+"/") {
			delete(tr, p)
		}
	}
	return tr
}

// topNames lists dir's entries but the cache (made by the first command
// that needs it), for escapes above the area.
func topNames(t *testing.T, dir string) string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		if e.Name() != "cache" {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	return strings.Join(names, " ")
}

// checkTarNames reads a tar stream as far as it goes and fails on any
// entry that would land outside the directory it is extracted in.
func checkTarNames(t *testing.T, label, stream string) {
	t.Helper()
	tr := tar.NewReader(strings.NewReader(stream))
	for {
		hdr, err := tr.Next()
		if err != nil {
			if err != io.EOF && stream != "" {
				t.Logf("%s: dump tar ends early: %v", label, err)
			}
			return
		}
		name := hdr.Name
		bad := strings.HasPrefix(name, "/") || strings.ContainsRune(name, 0)
		for _, el := range strings.Split(strings.TrimSuffix(name, "/"), "/") {
			if el == ".." || el == "." || el == "" {
				bad = true
			}
		}
		if bad {
			t.Errorf("%s: dump tar holds entry %q", label, name)
		}
		if hdr.Typeflag == tar.TypeLink {
			t.Errorf("%s: dump tar holds hard link %q -> %q", label, name, hdr.Linkname)
		}
	}
}

// checkErrorLines wants stderr to be error lines only, one per problem,
// and to name what was wrong.
func checkErrorLines(t *testing.T, label string, r Result, mention string) {
	t.Helper()
	if strings.TrimSpace(r.Stderr) == "" {
		t.Errorf("%s: no error message", label)
		return
	}
	for _, l := range strings.Split(strings.TrimRight(r.Stderr, "\n"), "\n") {
		if !strings.HasPrefix(l, "cairn: ") {
			t.Errorf("%s: stderr line %q is not an error line; stderr:\n%s", label, l, r.Stderr)
		}
	}
	if mention != "" && !strings.Contains(r.Stderr, mention) {
		t.Errorf("%s: the error does not name %s:\n%s", label, mention, r.Stderr)
	}
}

func TestRestoreRefusesHostileTrees(t *testing.T) {
	e := NewRepo(t)
	a := newSafetyArea(t, e.Dir)
	out := a.outside
	const evil = "written by a hostile snapshot\n"
	// From a target area/cases/NAME/t, "../../../outside" is the outside dir.
	const up = "../../../outside"

	type hostile struct {
		nodes   func(w *treeWriter) []*snapshot.Node
		mention string // what the error must name
	}
	cases := map[string]hostile{
		"dotdot-dir": {func(w *treeWriter) []*snapshot.Node {
			return []*snapshot.Node{w.dir("..", w.file("escaped-dotdot", evil))}
		}, strconv.Quote("..")},
		"dotdot-nested": {func(w *treeWriter) []*snapshot.Node {
			return []*snapshot.Node{w.dir("sub", w.dir("..", w.dir("..", w.dir("..", w.file("escaped-nested", evil)))))}
		}, strconv.Quote("..")},
		"dotdot-slash": {func(w *treeWriter) []*snapshot.Node {
			return []*snapshot.Node{w.file("../escaped-file", evil)}
		}, strconv.Quote("../escaped-file")},
		"dotdot-slash-deep": {func(w *treeWriter) []*snapshot.Node {
			return []*snapshot.Node{w.file(up+"/escaped-far", evil)}
		}, strconv.Quote(up + "/escaped-far")},
		"slash": {func(w *treeWriter) []*snapshot.Node {
			return []*snapshot.Node{w.dir("a"), w.file("a/b", evil)}
		}, strconv.Quote("a/b")},
		"absolute-file": {func(w *treeWriter) []*snapshot.Node {
			return []*snapshot.Node{w.file(out+"/abs-escape", evil)}
		}, strconv.Quote(out + "/abs-escape")},
		"absolute-dir": {func(w *treeWriter) []*snapshot.Node {
			return []*snapshot.Node{w.dir(out+"/sentinel", w.file("abs-dir-escape", evil))}
		}, strconv.Quote(out + "/sentinel")},
		"absolute-nested": {func(w *treeWriter) []*snapshot.Node {
			return []*snapshot.Node{w.dir("ok", w.file(out+"/victim", evil))}
		}, strconv.Quote(out + "/victim")},
		"empty-name": {func(w *treeWriter) []*snapshot.Node {
			return []*snapshot.Node{w.file("", evil)}
		}, `""`},
		"dot": {func(w *treeWriter) []*snapshot.Node {
			return []*snapshot.Node{w.dir(".", w.file("dot-file", evil))}
		}, strconv.Quote(".")},
		"nul": {func(w *treeWriter) []*snapshot.Node {
			return []*snapshot.Node{w.file("nul\x00name", evil)}
		}, strconv.Quote("nul\x00name")},
		"symlink-then-dir": {func(w *treeWriter) []*snapshot.Node {
			return []*snapshot.Node{w.symlink("link", out+"/sentinel"), w.dir("link", w.file("through-link", evil))}
		}, "link"},
		"relative-symlink-then-dir": {func(w *treeWriter) []*snapshot.Node {
			return []*snapshot.Node{w.symlink("link", up+"/sentinel"), w.dir("link", w.file("through-rel-link", evil))}
		}, "link"},
		"nested-symlink-then-dir": {func(w *treeWriter) []*snapshot.Node {
			return []*snapshot.Node{w.dir("sub", w.symlink("link", out+"/sentinel"), w.dir("link", w.dir("deeper", w.file("x", evil))))}
		}, "link"},
		"symlink-then-file": {func(w *treeWriter) []*snapshot.Node {
			return []*snapshot.Node{w.symlink("link", out+"/victim"), w.file("link", evil)}
		}, "link"},
		"file-then-symlink": {func(w *treeWriter) []*snapshot.Node {
			f := w.file("the-file", evil)
			f.Mode = 0o6777 // a chmod through the later symlink would show on the victim
			return []*snapshot.Node{f, w.symlink("the-file", out+"/victim")}
		}, "the-file"},
		"dir-then-symlink": {func(w *treeWriter) []*snapshot.Node {
			d := w.dir("the-dir", w.file("x", evil))
			d.Mode = 0o777
			return []*snapshot.Node{d, w.symlink("the-dir", out+"/sentinel")}
		}, "the-dir"},
		"hardlink-escape": {func(w *treeWriter) []*snapshot.Node {
			return []*snapshot.Node{w.hardlink("../hl-escape", evil, 7), w.hardlink("hl", evil, 7)}
		}, strconv.Quote("../hl-escape")},
		"hardlink-through-symlink": {func(w *treeWriter) []*snapshot.Node {
			h := w.hardlink("the-link", evil, 8)
			h.Mode = 0o4777
			return []*snapshot.Node{h, w.symlink("the-link", out+"/victim"), w.hardlink("the-link2", evil, 8)}
		}, "the-link"},
	}
	// A symlink pointing outside is legal content: restored as it is,
	// never followed.
	const control = "control"
	ids := craftSnapshots(t, e, func(w *treeWriter) map[string]repo.ID {
		roots := map[string]repo.ID{}
		for name, c := range cases {
			roots[name] = w.tree(c.nodes(w)...)
		}
		roots[control] = w.tree(w.file("a-file", "fine\n"), w.symlink("b-link", out+"/victim"),
			w.dir("c-dir", w.symlink("d-link", up+"/sentinel")))
		return roots
	})

	names := make([]string, 0, len(ids))
	for name := range ids {
		names = append(names, name)
		if err := os.MkdirAll(filepath.Join(a.root, "cases", name, "t"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	sort.Strings(names)
	above := topNames(t, e.Dir)
	for _, name := range names {
		target := filepath.Join(a.root, "cases", name, "t")
		before := a.fingerprint(t, target)
		r := e.Run("restore", ids[name], "--target", target)
		if name == control {
			if r.Code != 0 {
				t.Errorf("%s: %s", name, r)
			}
			if l, err := os.Readlink(filepath.Join(target, "b-link")); err != nil || l != out+"/victim" {
				t.Errorf("%s: b-link restored as %q, %v", name, l, err)
			}
		} else {
			if r.Code != 1 {
				t.Errorf("%s: restore of a hostile tree: want exit 1, got:\n%s", name, r)
			}
			checkErrorLines(t, name, r, cases[name].mention)
		}
		after := a.fingerprint(t, target)
		t.Run(name, func(t *testing.T) { compareTrees(t, before, after, compareOptions{NoAtime: true}) })
		if got := topNames(t, e.Dir); got != above {
			t.Errorf("%s: entries next to the area changed: %q, was %q", name, got, above)
		}

		d := e.Run("dump", ids[name], "/")
		if name == control && d.Code != 0 {
			t.Errorf("%s: dump: %s", name, d)
		}
		checkTarNames(t, name, d.Stdout)
	}
}

// restoreFixture backs up a small tree for the planted-symlink tests.
func restoreFixture(t *testing.T, e *Env) string {
	t.Helper()
	src := filepath.Join(e.Dir, "src")
	WriteFile(t, filepath.Join(src, "d", "f1"), []byte("inside f1\n"))
	WriteFile(t, filepath.Join(src, "g"), []byte("g content\n"))
	WriteFile(t, filepath.Join(src, "h0"), []byte("h content\n"))
	if err := os.Link(filepath.Join(src, "h0"), filepath.Join(src, "h1")); err != nil {
		t.Fatal(err)
	}
	WriteFile(t, filepath.Join(src, "sub", "deeper", "f2"), []byte("f2\n"))
	e.Must("backup", src)
	return src
}

// plantSymlinks replaces entries of a restored copy with symlinks to the outside.
func plantSymlinks(t *testing.T, copyRoot string, links map[string]string) {
	t.Helper()
	for rel, to := range links {
		p := filepath.Join(copyRoot, rel)
		if err := os.RemoveAll(p); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(to, p); err != nil {
			t.Fatal(err)
		}
	}
}

func wantRegularFile(t *testing.T, label, p, content string) {
	t.Helper()
	fi, err := os.Lstat(p)
	if err != nil {
		t.Errorf("%s: %v", label, err)
		return
	}
	if !fi.Mode().IsRegular() {
		t.Errorf("%s: %s is a %s, want a regular file", label, p, fi.Mode().Type())
		return
	}
	if b, err := os.ReadFile(p); err != nil || string(b) != content {
		t.Errorf("%s: %s holds %q (%v), want %q", label, p, b, err, content)
	}
}

func TestRestoreOverPlantedSymlinks(t *testing.T) {
	e := NewRepo(t)
	a := newSafetyArea(t, e.Dir)
	src := restoreFixture(t, e)
	out := a.outside
	links := map[string]string{
		"d":   out + "/victim-dir",
		"g":   out + "/victim-g",
		"h0":  out + "/victim-h",
		"sub": out + "/anc",
	}
	for _, policy := range []string{"always", "if-changed", "never"} {
		for _, del := range []bool{false, true} {
			label := "--overwrite " + policy
			args := []string{"restore", "latest", "--overwrite", policy}
			if del {
				label += " --delete"
				args = append(args, "--delete")
			}
			target := filepath.Join(a.root, "t-"+policy+"-"+strconv.FormatBool(del))
			e.Must("restore", "latest", "--target", target)
			copyRoot := filepath.Join(target, src)
			plantSymlinks(t, copyRoot, links)

			before := a.fingerprint(t, target)
			r := e.Run(append(args, "--target", target)...)
			after := a.fingerprint(t, target)
			t.Run(strings.ReplaceAll(label, " ", "_"), func(t *testing.T) {
				compareTrees(t, before, after, compareOptions{NoAtime: true})
			})
			if policy == "never" {
				// Existing entries are left alone, planted symlinks included.
				for rel, to := range links {
					if l, err := os.Readlink(filepath.Join(copyRoot, rel)); err != nil || l != to {
						t.Errorf("%s: %s is no longer the symlink it was (%q, %v)", label, rel, l, err)
					}
				}
				continue
			}
			if r.Code != 0 {
				t.Errorf("%s: %s", label, r)
			}
			wantRegularFile(t, label, filepath.Join(copyRoot, "d", "f1"), "inside f1\n")
			wantRegularFile(t, label, filepath.Join(copyRoot, "g"), "g content\n")
			wantRegularFile(t, label, filepath.Join(copyRoot, "h0"), "h content\n")
			wantRegularFile(t, label, filepath.Join(copyRoot, "h1"), "h content\n")
			wantRegularFile(t, label, filepath.Join(copyRoot, "sub", "deeper", "f2"), "f2\n")
		}
	}

	// A directory on the way to the backed-up path, replaced by a symlink.
	target := filepath.Join(a.root, "t-ancestor")
	e.Must("restore", "latest", "--target", target)
	first := strings.SplitN(strings.TrimPrefix(src, "/"), "/", 2)[0]
	plantSymlinks(t, target, map[string]string{first: out + "/anc"})
	before := a.fingerprint(t, target)
	r := e.Run("restore", "latest", "--target", target)
	after := a.fingerprint(t, target)
	compareTrees(t, before, after, compareOptions{NoAtime: true})
	if r.Code != 0 {
		t.Errorf("restore over a symlinked ancestor: %s", r)
	}
	wantRegularFile(t, "ancestor", filepath.Join(target, src, "d", "f1"), "inside f1\n")
	if fi, err := os.Lstat(filepath.Join(target, first)); err != nil || !fi.IsDir() {
		t.Errorf("ancestor %s in the target is not a directory after restore: %v", first, err)
	}
}
