package snapshot_test

import (
	"bytes"
	"context"
	"crypto/md5"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cairn-backup/cairn/crypto"
	"github.com/cairn-backup/cairn/index"
	"github.com/cairn-backup/cairn/pack"
	"github.com/cairn-backup/cairn/repo"
	"github.com/cairn-backup/cairn/repo/mem"
	"github.com/cairn-backup/cairn/snapshot"
	"golang.org/x/sys/unix"
)

// fakeBucket is an object store in memory that counts the downloads of
// each object. Its listing, like S3's, has no metadata.
type fakeBucket struct {
	mu      sync.Mutex
	objects map[string]snapshot.Object
	data    map[string][]byte
	opens   map[string]int
	broken  map[string]bool // Open fails
	reverse bool            // list in the wrong order
}

func newFakeBucket() *fakeBucket {
	return &fakeBucket{objects: map[string]snapshot.Object{}, data: map[string][]byte{},
		opens: map[string]int{}, broken: map[string]bool{}}
}

var fakeClock = time.Date(2026, 11, 20, 10, 0, 0, 123e6, time.UTC)

func (b *fakeBucket) put(key string, data []byte, contentType string, meta map[string]string) {
	sum := md5.Sum(data)
	fakeClock = fakeClock.Add(time.Second)
	b.objects[key] = snapshot.Object{Key: key, Size: int64(len(data)), ETag: hex.EncodeToString(sum[:]),
		LastModified: fakeClock, ContentType: contentType, Metadata: meta}
	b.data[key] = data
}

func (b *fakeBucket) List(ctx context.Context, fn func(snapshot.Object) error) error {
	keys := slices.Sorted(maps.Keys(b.objects))
	if b.reverse {
		slices.Reverse(keys)
	}
	for _, k := range keys {
		o := b.objects[k]
		o.ContentType, o.Metadata = "", nil
		if err := fn(o); err != nil {
			return err
		}
	}
	return nil
}

func (b *fakeBucket) Open(ctx context.Context, key string) (io.ReadCloser, snapshot.Object, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.opens[key]++
	if b.broken[key] {
		return nil, snapshot.Object{}, fmt.Errorf("get %s: connection reset", key)
	}
	o := b.objects[key]
	o.LastModified = o.LastModified.Truncate(time.Second) // as a GET gives it
	return io.NopCloser(bytes.NewReader(b.data[key])), o, nil
}

func (b *fakeBucket) opened() map[string]int {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := maps.Clone(b.opens)
	clear(b.opens)
	return out
}

func newMemStore(t *testing.T) *pack.Store {
	t.Helper()
	ctx := context.Background()
	r, err := repo.Init(ctx, mem.New(), []byte("pw"), repo.InitOptions{KDF: crypto.KDFParams{Time: 1, MemoryKiB: 64, Threads: 1}})
	if err != nil {
		t.Fatal(err)
	}
	idx, err := index.Load(ctx, r, index.Options{CacheDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { idx.Close() })
	return pack.NewStore(r, idx)
}

func backupObjects(t *testing.T, store *pack.Store, b *fakeBucket, parent *snapshot.Snapshot) *snapshot.Snapshot {
	t.Helper()
	sn, err := snapshot.BackupObjects(context.Background(), store,
		snapshot.BackupOptions{Hostname: "h", Cluster: "prod", Component: "objects", Parent: parent}, b)
	if err != nil {
		t.Fatal(err)
	}
	return sn
}

// files returns every file of sn by path.
func files(t *testing.T, store *pack.Store, sn *snapshot.Snapshot) map[string]*snapshot.Node {
	t.Helper()
	out := map[string]*snapshot.Node{}
	err := snapshot.Walk(context.Background(), store, sn.Tree, func(p string, n *snapshot.Node) error {
		if n.Type == snapshot.TypeFile {
			out[p] = n
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// readAll returns every object of sn as WalkObjects gives it, with its content.
func readAll(t *testing.T, store *pack.Store, sn *snapshot.Snapshot) (map[string]snapshot.Object, map[string][]byte) {
	t.Helper()
	objs, data := map[string]snapshot.Object{}, map[string][]byte{}
	err := snapshot.WalkObjects(context.Background(), store, sn.Tree, func(o snapshot.Object, r io.Reader) error {
		b, err := io.ReadAll(r)
		if err != nil {
			return err
		}
		if _, dup := objs[o.Key]; dup {
			return fmt.Errorf("key %q twice", o.Key)
		}
		objs[o.Key], data[o.Key] = o, b
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return objs, data
}

// twentyObjects fills b with 20 objects under a few prefixes, two of them
// larger than a chunk.
func twentyObjects(b *fakeBucket) {
	rnd := rand.New(rand.NewSource(1))
	for i := range 20 {
		size := 100 + rnd.Intn(5000)
		if i%9 == 0 {
			size = 3<<20 + rnd.Intn(1<<20)
		}
		data := make([]byte, size)
		rnd.Read(data)
		key := fmt.Sprintf("data/%d/obj-%02d.bin", i%3, i)
		b.put(key, data, "application/octet-stream", map[string]string{"index": fmt.Sprint(i)})
	}
}

func TestBackupObjectsPaths(t *testing.T) {
	store := newMemStore(t)
	b := newFakeBucket()
	// Keys that are no valid paths as they are, and a key that is both a
	// file and a directory.
	want := map[string]string{
		"plain.txt":          "/plain.txt",
		"dir/sub/b.bin":      "/dir/sub/b.bin",
		"dir/sub":            "/dir/sub%", // also the directory of dir/sub/b.bin
		"/leading":           "/%/leading",
		"double//slash":      "/double/%/slash",
		"folder/":            "/folder/%",
		"folder/x":           "/folder/x",
		"../escape":          "/%2E%2E/escape",
		"a/./b":              "/a/%2E/b",
		"a/../../etc/passwd": "/a/%2E%2E/%2E%2E/etc/passwd",
		"100%/done%":         "/100%25/done%25",
		"nul\x00byte":        "/nul%00byte",
		"..":                 "/%2E%2E%", // also the directory of ../escape
		"ünïcode/ök":         "/ünïcode/ök",
	}
	for key := range want {
		b.put(key, []byte("content of "+key), "text/plain", nil)
	}
	sn := backupObjects(t, store, b, nil)

	got := files(t, store, sn)
	if len(got) != len(want) {
		t.Errorf("%d files, want %d: %v", len(got), len(want), slices.Sorted(maps.Keys(got)))
	}
	for key, p := range want {
		n := got[p]
		if n == nil {
			t.Errorf("key %q: no file %s", key, p)
			continue
		}
		back, err := snapshot.ObjectKey(p)
		if err != nil || back != key {
			t.Errorf("ObjectKey(%q) = %q, %v; want %q", p, back, err, key)
		}
	}
	objs, data := readAll(t, store, sn)
	for key := range want {
		if !bytes.Equal(data[key], b.data[key]) {
			t.Errorf("key %q: content %q, want %q", key, data[key], b.data[key])
		}
		if objs[key].ETag != b.objects[key].ETag {
			t.Errorf("key %q: ETag %q, want %q", key, objs[key].ETag, b.objects[key].ETag)
		}
	}
	if !slices.Equal(sn.Paths, []string{"/"}) {
		t.Errorf("snapshot paths %v, want [/]", sn.Paths)
	}

	// A restore to a directory puts every object under the target, nowhere else.
	dir := t.TempDir()
	target := filepath.Join(dir, "target")
	_, err := snapshot.Restore(context.Background(), store, sn, snapshot.RestoreOptions{Target: target})
	if err != nil && !xattrsUnsupported(t, dir) {
		t.Fatalf("restore: %v", err)
	}
	for key, p := range want {
		b2, err := os.ReadFile(filepath.Join(target, filepath.FromSlash(p)))
		if err != nil || !bytes.Equal(b2, b.data[key]) {
			t.Errorf("restored %s: %q, %v; want the content of %q", p, b2, err, key)
		}
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("the restore wrote next to its target: %v", entries)
	}
}

// xattrsUnsupported reports whether dir's filesystem refuses user xattrs,
// which a restore of object metadata needs.
func xattrsUnsupported(t *testing.T, dir string) bool {
	p := filepath.Join(dir, "probe")
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(p)
	return errors.Is(unix.Setxattr(p, "user.probe", []byte("1"), 0), unix.ENOTSUP)
}

func TestBackupObjectsMetadata(t *testing.T) {
	store := newMemStore(t)
	b := newFakeBucket()
	b.put("report.csv", []byte("a,b\n1,2\n"), "text/csv", map[string]string{"owner": "alice", "x-review": "done"})
	b.put("empty", nil, "", nil)
	sn := backupObjects(t, store, b, nil)

	objs, data := readAll(t, store, sn)
	o := objs["report.csv"]
	src := b.objects["report.csv"]
	if o.ETag != src.ETag || o.Size != src.Size || o.ContentType != "text/csv" ||
		!maps.Equal(o.Metadata, src.Metadata) || !o.LastModified.Equal(src.LastModified) {
		t.Errorf("object kept as %+v, want %+v", o, src)
	}
	if string(data["report.csv"]) != "a,b\n1,2\n" {
		t.Errorf("content %q", data["report.csv"])
	}
	if e := objs["empty"]; e.Size != 0 || e.ETag != b.objects["empty"].ETag || len(data["empty"]) != 0 {
		t.Errorf("empty object kept as %+v with %d bytes", e, len(data["empty"]))
	}

	// The restored file carries the object's time and, as xattrs, its metadata.
	target := t.TempDir()
	if _, err := snapshot.Restore(context.Background(), store, sn, snapshot.RestoreOptions{Target: target}); err != nil {
		if xattrsUnsupported(t, target) {
			t.Skipf("no user xattrs here: %v", err)
		}
		t.Fatal(err)
	}
	p := filepath.Join(target, "report.csv")
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if !fi.ModTime().Equal(src.LastModified) {
		t.Errorf("restored mtime %v, want the object's %v", fi.ModTime(), src.LastModified)
	}
	for name, want := range map[string]string{
		"user.cairn.s3.etag": src.ETag, "user.cairn.s3.content-type": "text/csv", "user.cairn.s3.meta.owner": "alice",
	} {
		buf := make([]byte, 256)
		n, err := unix.Getxattr(p, name, buf)
		if err != nil || string(buf[:n]) != want {
			t.Errorf("xattr %s = %q, %v; want %q", name, buf[:max(n, 0)], err, want)
		}
	}
}

func TestBackupObjectsUnchangedNotDownloaded(t *testing.T) {
	store := newMemStore(t)
	b := newFakeBucket()
	twentyObjects(b)
	first := backupObjects(t, store, b, nil)
	if opens := b.opened(); len(opens) != 20 {
		t.Fatalf("first backup opened %d objects, want all 20", len(opens))
	}
	if s := first.Summary; s.FilesNew != 20 || s.FilesChanged != 0 || s.FilesUnmodified != 0 {
		t.Errorf("first summary: %+v", s)
	}

	// One object changed (same size, new content), one added; another got
	// new metadata only, which S3 gives a new ETag only with new content.
	changed, added := "data/1/obj-04.bin", "data/new/obj-20.bin"
	old := b.data[changed]
	b.put(changed, bytes.Repeat([]byte{'x'}, len(old)), "application/octet-stream", map[string]string{"index": "4b"})
	b.put(added, []byte("new object"), "text/plain", nil)
	second := backupObjects(t, store, b, first)

	opens := b.opened()
	if want := map[string]int{changed: 1, added: 1}; !maps.Equal(opens, want) {
		t.Errorf("second backup opened %v, want only %v", opens, want)
	}
	if s := second.Summary; s.FilesNew != 1 || s.FilesChanged != 1 || s.FilesUnmodified != 19 || s.TotalFilesProcessed != 21 {
		t.Errorf("second summary: new %d, changed %d, unmodified %d, total %d; want 1, 1, 19, 21",
			s.FilesNew, s.FilesChanged, s.FilesUnmodified, s.TotalFilesProcessed)
	}
	if second.Parent == nil || *second.Parent != first.ID {
		t.Errorf("second snapshot's parent %v, want %s", second.Parent, first.ID.Short())
	}
	objs, data := readAll(t, store, second)
	if len(objs) != 21 {
		t.Errorf("second snapshot holds %d objects, want 21", len(objs))
	}
	for key, src := range b.objects {
		o := objs[key]
		if !bytes.Equal(data[key], b.data[key]) || o.ETag != src.ETag || !maps.Equal(o.Metadata, src.Metadata) ||
			!o.LastModified.Equal(src.LastModified) {
			t.Errorf("object %s: %+v with %d bytes, want %+v with %d bytes", key, o, len(data[key]), src, len(b.data[key]))
		}
	}

	// Nothing changed: nothing read, and the same tree.
	third := backupObjects(t, store, b, second)
	if opens := b.opened(); len(opens) != 0 {
		t.Errorf("third backup opened %v, want nothing", opens)
	}
	if third.Tree != second.Tree {
		t.Errorf("an unchanged bucket gave tree %s, the parent's is %s", third.Tree.Short(), second.Tree.Short())
	}
	if s := third.Summary; s.FilesUnmodified != 21 || s.DirsChanged != 0 || s.DirsNew != 0 {
		t.Errorf("third summary: %+v", s)
	}

	// Force reads everything again.
	_, err := snapshot.BackupObjects(context.Background(), store, snapshot.BackupOptions{Parent: third, Force: true}, b)
	if err != nil {
		t.Fatal(err)
	}
	if opens := b.opened(); len(opens) != 21 {
		t.Errorf("a forced backup opened %d objects, want 21", len(opens))
	}
}

func TestBackupObjectsReadError(t *testing.T) {
	store := newMemStore(t)
	b := newFakeBucket()
	twentyObjects(b)
	broken := "data/2/obj-05.bin"
	b.broken[broken] = true
	rep := &errorList{}
	sn, err := snapshot.BackupObjects(context.Background(), store, snapshot.BackupOptions{Reporter: rep}, b)
	if !errors.Is(err, snapshot.ErrPartial) || sn == nil {
		t.Fatalf("backup with an unreadable object: %v, snapshot %v; want a partial snapshot", err, sn)
	}
	if len(rep.paths) != 1 || rep.paths[0] != "/"+broken {
		t.Errorf("reported %v, want /%s", rep.paths, broken)
	}
	objs, _ := readAll(t, store, sn)
	if _, ok := objs[broken]; ok || len(objs) != 19 {
		t.Errorf("snapshot holds %d objects (the broken one: %v), want the 19 others", len(objs), ok)
	}
}

func TestBackupObjectsOutOfOrder(t *testing.T) {
	store := newMemStore(t)
	b := newFakeBucket()
	twentyObjects(b)
	b.reverse = true
	if _, err := snapshot.BackupObjects(context.Background(), store, snapshot.BackupOptions{}, b); err == nil ||
		!strings.Contains(err.Error(), "not in key order") {
		t.Errorf("a listing out of order gave %v", err)
	}
}

func TestObjectKeyRejectsBadEscapes(t *testing.T) {
	for _, p := range []string{"/a%2", "/a%zz/b", "/%4", "/x/%%%"} {
		if k, err := snapshot.ObjectKey(p); err == nil {
			t.Errorf("ObjectKey(%q) = %q, want an error", p, k)
		}
	}
	// A trailing "%" is the mark of a file named like a directory.
	if k, err := snapshot.ObjectKey("/a%"); err != nil || k != "a" {
		t.Errorf("ObjectKey(/a%%) = %q, %v; want a", k, err)
	}
	if k, err := snapshot.ObjectKey("/d%/x"); err == nil {
		t.Errorf("ObjectKey(/d%%/x) = %q: a directory has no mark", k)
	}
}

type errorList struct {
	mu    sync.Mutex
	paths []string
}

func (e *errorList) Progress(snapshot.Progress) {}

func (e *errorList) Error(path string, err error) {
	e.mu.Lock()
	e.paths = append(e.paths, path)
	e.mu.Unlock()
}
