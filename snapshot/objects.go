package snapshot

import (
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/cairn-backup/cairn/pack"
	"github.com/cairn-backup/cairn/repo"
	"golang.org/x/sync/errgroup"
)

// A snapshot of objects (an S3 bucket) holds one file per object, at the
// object's key split on "/" (docs/format.md, "Objects"): "logs/2026/a.gz"
// is the file a.gz in logs/2026. The object's size and last modification
// time are the file's; its ETag, content type and user metadata are kept
// as xattrs named below, which a restore to a directory sets on the files.
const (
	objectXattrPrefix = "user.cairn.s3."
	xattrETag         = objectXattrPrefix + "etag"
	xattrContentType  = objectXattrPrefix + "content-type"
	xattrMetaPrefix   = objectXattrPrefix + "meta."
)

// Object is one object of a bucket.
type Object struct {
	Key          string
	Size         int64
	ETag         string // as the server gives it, without quotes
	LastModified time.Time
	ContentType  string
	// Metadata is the user metadata (x-amz-meta-*): names in lower case,
	// without the prefix.
	Metadata map[string]string
}

// ObjectSource is a set of objects to back up, such as a bucket.
type ObjectSource interface {
	// List calls fn for every object in key order (byte order), the order
	// S3 lists them in. ContentType and Metadata may be left empty: the
	// objects that are read get theirs from Open.
	List(ctx context.Context, fn func(Object) error) error
	// Open starts reading the object called key. The Object returned
	// describes what is read, which may be newer than the listing.
	Open(ctx context.Context, key string) (io.ReadCloser, Object, error)
}

// objectJob is an object to download into the repository.
type objectJob struct {
	obj  Object // as listed
	path string
	node *Node
	prev *Node // the parent snapshot's file at the same path, if any
	fut  *future
}

// objectDir is a directory of the tree being built: the entries found so
// far under its path. A directory's objects are listed one after the other
// (every key with the prefix "a/" sorts between two keys with it), so it
// is finished as soon as a key outside it comes.
type objectDir struct {
	path     string // "" for the root, else "/a/b"
	node     *Node  // its Name is the last name of path
	prev     *Node  // the parent snapshot's directory at this path
	prevTree *Tree
	entries  []*future
}

type objectArchiver struct {
	*archiver
	src      ObjectSource
	jobs     chan objectJob
	uid, gid uint32
	owner    [2]string // user and group names
}

// BackupObjects backs up the objects src lists as a snapshot with one file
// per object (see Object and docs/format.md), and saves it unless
// opts.DryRun. Of opts, Paths, Excludes, OneFileSystem and Stdin are not
// used; the snapshot's path is "/".
//
// An object whose key, size and ETag are those of a file of opts.Parent is
// not downloaded again: the parent's content and metadata stand for it.
// The others are read several at once (opts.ReadConcurrency, default 8
// or twice the cores: downloads wait on the network) and chunked as they
// arrive, so memory does not grow with their size. An object that cannot
// be read is reported and left out, and the error wraps ErrPartial.
func BackupObjects(ctx context.Context, store *pack.Store, opts BackupOptions, src ObjectSource) (*Snapshot, error) {
	start := time.Now()
	a := &objectArchiver{
		archiver: newArchiver(store, opts),
		src:      src, uid: uint32(os.Getuid()), gid: uint32(os.Getgid()),
	}
	a.owner[0], a.owner[1] = lookupNames(a.uid, a.gid)
	if opts.ReadConcurrency <= 0 {
		a.opts.ReadConcurrency = max(8, 2*cores)
	}
	parentTree, before, err := a.prepare(ctx)
	if err != nil {
		return nil, err
	}
	var rootID repo.ID
	err = store.WithUploader(ctx, pack.Options{}, func(ctx context.Context) error {
		root, err := a.run(ctx, start, parentTree)
		if err != nil {
			return err
		}
		rootID, err = SaveTree(ctx, store, root)
		return err
	})
	if err != nil {
		return nil, err
	}
	return a.save(ctx, start, before, rootID, []string{"/"})
}

// run lists the objects and builds the tree while the workers download.
func (a *objectArchiver) run(ctx context.Context, start time.Time, parentTree *Tree) (*Tree, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	a.fail = cancel
	a.jobs = make(chan objectJob)
	g, gctx := errgroup.WithContext(ctx)
	a.startWorkers(gctx, g, a.objectWorker)
	stopProgress := a.startProgress(start)
	defer stopProgress()

	var root *Tree
	g.Go(func() error {
		defer close(a.jobs)
		var err error
		root, err = a.list(gctx, parentTree)
		return err
	})
	if err := g.Wait(); err != nil {
		return nil, err
	}
	if err := context.Cause(ctx); err != nil {
		return nil, err
	}
	return root, nil
}

// list walks the listing, keeping open the directories on the path of the
// last key, and returns the root tree once every object is stored.
func (a *objectArchiver) list(ctx context.Context, parentTree *Tree) (*Tree, error) {
	stack := []*objectDir{{node: &Node{Type: TypeDir}, prevTree: parentTree}}
	// closeTo finishes the open directories below depth k.
	closeTo := func(k int) {
		for len(stack) > k {
			d := stack[len(stack)-1]
			stack = stack[:len(stack)-1]
			up := stack[len(stack)-1]
			up.entries = append(up.entries, a.finishDir(ctx, d))
		}
	}
	var last string
	n := 0
	err := a.src.List(ctx, func(o Object) error {
		if n > 0 && o.Key <= last {
			return fmt.Errorf("list objects: %q comes after %q: not in key order", o.Key, last)
		}
		last = o.Key
		n++
		names := objectNames(o.Key)
		dirs, file := names[:len(names)-1], names[len(names)-1]
		k := 1 // stack[k] is dirs[k-1] while they agree
		for k < len(stack) && k-1 < len(dirs) && string(stack[k].node.Name) == dirs[k-1] {
			k++
		}
		closeTo(k)
		for _, name := range dirs[k-1:] {
			stack = append(stack, a.openDir(ctx, stack[len(stack)-1], name))
		}
		d := stack[len(stack)-1]
		f, err := a.saveObject(ctx, d, file, o)
		if err != nil {
			return err
		}
		d.entries = append(d.entries, f)
		return nil
	})
	if err != nil {
		return nil, err
	}
	closeTo(1)
	root := a.finishDir(ctx, stack[0])
	if _, err := root.wait(ctx); err != nil {
		return nil, err
	}
	if root.tree == nil {
		return nil, context.Cause(ctx)
	}
	return root.tree, nil
}

// openDir starts directory name in d, with the parent snapshot's
// directory of the same path to compare its objects with.
func (a *objectArchiver) openDir(ctx context.Context, d *objectDir, name string) *objectDir {
	c := &objectDir{path: d.path + "/" + name,
		node: &Node{Name: Name(name), Type: TypeDir, Mode: 0o755, UID: a.uid, GID: a.gid, User: a.owner[0], Group: a.owner[1]}}
	if d.prevTree != nil {
		if p := d.prevTree.Find([]byte(name)); p != nil && p.Type == TypeDir {
			if t, err := LoadTree(ctx, a.store, *p.Subtree); err == nil {
				// An unreadable parent tree only costs downloads.
				c.prev, c.prevTree = p, t
			}
		}
	}
	a.ndirs.Add(1)
	return c
}

// saveObject archives object o as file name of d: from the parent
// snapshot when it has the same object, else through a worker.
func (a *objectArchiver) saveObject(ctx context.Context, d *objectDir, name string, o Object) (*future, error) {
	a.nfiles.Add(1)
	n := &Node{Name: Name(name), Type: TypeFile, Mode: 0o644, UID: a.uid, GID: a.gid, User: a.owner[0], Group: a.owner[1]}
	setObject(n, o)
	var prev *Node
	if d.prevTree != nil {
		prev = d.prevTree.Find([]byte(name))
		if prev != nil && prev.Type == TypeDir {
			// The file was renamed for a directory of the same name.
			prev = d.prevTree.Find([]byte(name + conflictMark))
		}
		if prev != nil && prev.Type != TypeFile {
			prev = nil
		}
	}
	if a.sameObject(o, prev) {
		n.Content = prev.Content
		n.Xattrs = prev.Xattrs // the listing may not give the metadata: the parent has it
		a.bytes.Add(o.Size)
		a.count(prev, false)
		return resolved(n), nil
	}
	f := newFuture()
	select {
	case a.jobs <- objectJob{obj: o, path: d.path + "/" + name, node: n, prev: prev, fut: f}:
		return f, nil
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	}
}

// sameObject reports whether prev, a file of the parent snapshot, holds
// object o: same size and ETag, and all its content still in the index.
func (a *objectArchiver) sameObject(o Object, prev *Node) bool {
	if prev == nil || a.opts.Force || o.ETag == "" || prev.Size != uint64(o.Size) || xattr(prev, xattrETag) != o.ETag {
		return false
	}
	idx := a.store.Index()
	for _, id := range prev.Content {
		if !idx.Has(repo.DataBlob, id) {
			return false
		}
	}
	return true
}

// objectWorker downloads objects, chunks them and hands the chunks to the
// blob workers.
func (a *objectArchiver) objectWorker(ctx context.Context) error {
	ch := a.newChunker()
	for job := range a.jobs {
		a.current.Store(&job.path)
		rc, o, err := a.src.Open(ctx, job.obj.Key)
		if err != nil {
			if ctx.Err() != nil {
				job.fut.resolve(nil)
				return context.Cause(ctx)
			}
			a.report(job.path, err)
			job.fut.resolve(nil)
			continue
		}
		content, size, readErr, err := a.readContent(ctx, ch, 0, rc, true)
		rc.Close()
		if err != nil {
			job.fut.resolve(nil)
			return err
		}
		if readErr != nil {
			a.report(job.path, fmt.Errorf("read object %s: %w", job.obj.Key, readErr))
			job.fut.resolve(nil)
			continue
		}
		// The file is what was read, with the metadata of that read. Its
		// time stays the listing's (milliseconds; a GET gives seconds)
		// unless the object was replaced since.
		o.Key, o.Size = job.obj.Key, size
		if o.ETag == job.obj.ETag || o.LastModified.IsZero() {
			o.LastModified = job.obj.LastModified
		}
		setObject(job.node, o)
		job.node.Content = content
		a.count(job.prev, true)
		job.fut.resolve(job.node)
	}
	return nil
}

// finishDir returns a future of d's node, resolved once its entries are
// stored and its tree saved (unless it is the root, whose tree the caller
// saves). The listing goes on meanwhile.
func (a *objectArchiver) finishDir(ctx context.Context, d *objectDir) *future {
	out := newFuture()
	finish := func() {
		t := &Tree{Nodes: make([]*Node, 0, len(d.entries))}
		for _, f := range d.entries {
			n, err := f.wait(ctx)
			if err != nil {
				out.resolve(nil)
				return
			}
			if n != nil {
				t.Nodes = append(t.Nodes, n)
			}
		}
		markConflicts(t)
		out.tree = t
		if d.path == "" {
			out.resolve(d.node)
			return
		}
		var id repo.ID
		var err error
		if d.prevTree != nil && t.Equal(d.prevTree) {
			id = *d.prev.Subtree
		} else if id, err = SaveTree(ctx, a.store, t); err != nil {
			a.fail(fmt.Errorf("save tree of %s: %w", d.path, err))
			out.resolve(nil)
			return
		}
		d.node.Subtree = &id
		a.mu.Lock()
		switch {
		case d.prev == nil:
			a.summary.DirsNew++
		case *d.prev.Subtree != id:
			a.summary.DirsChanged++
		default:
			a.summary.DirsUnmodified++
		}
		a.mu.Unlock()
		out.resolve(d.node)
	}
	if slices.ContainsFunc(d.entries, func(f *future) bool { return !f.ready() }) {
		go finish() // waits for its downloads; bounded by the worker queue
	} else {
		finish()
	}
	return out
}

// conflictMark ends the name of a file that has the name of a directory:
// keys "a" and "a/b" give the file "a%" and the directory "a".
const conflictMark = "%"

// markConflicts renames the files of t that have the name of a directory
// of t, and sorts t.
func markConflicts(t *Tree) {
	t.Sort()
	dup := false
	for i := 1; i < len(t.Nodes); i++ {
		a, b := t.Nodes[i-1], t.Nodes[i]
		if string(a.Name) != string(b.Name) {
			continue
		}
		if a.Type != TypeFile {
			a, b = b, a
		}
		a.Name = Name(string(a.Name) + conflictMark)
		dup = true
	}
	if dup {
		t.Sort()
	}
}

// objectNames returns the names of the path of key's file: its segments
// between "/", each escaped so that it is a valid name (docs/format.md,
// "Objects"): "%" is written "%25" and NUL "%00"; an empty segment (a
// leading, trailing or doubled "/") is "%"; "." and ".." are "%2E" and
// "%2E%2E".
func objectNames(key string) []string {
	names := strings.Split(key, "/")
	for i, s := range names {
		names[i] = escapeSegment(s)
	}
	return names
}

func escapeSegment(s string) string {
	switch s {
	case "":
		return "%"
	case ".":
		return "%2E"
	case "..":
		return "%2E%2E"
	}
	if !strings.ContainsAny(s, "%\x00") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '%':
			b.WriteString("%25")
		case 0:
			b.WriteString("%00")
		default:
			b.WriteByte(s[i])
		}
	}
	return b.String()
}

// ObjectKey returns the key of the object whose file is at path p ("/a/b")
// in a snapshot of objects: the inverse of the names BackupObjects gives.
func ObjectKey(p string) (string, error) {
	names := strings.Split(strings.TrimPrefix(p, "/"), "/")
	for i, name := range names {
		if i == len(names)-1 && len(name) > 1 && strings.HasSuffix(name, conflictMark) {
			name = strings.TrimSuffix(name, conflictMark)
		}
		s, err := unescapeSegment(name)
		if err != nil {
			return "", fmt.Errorf("path %q is no object's: %w", p, err)
		}
		names[i] = s
	}
	return strings.Join(names, "/"), nil
}

func unescapeSegment(name string) (string, error) {
	if name == "%" {
		return "", nil
	}
	if !strings.Contains(name, "%") {
		return name, nil
	}
	var b strings.Builder
	for i := 0; i < len(name); i++ {
		if name[i] != '%' {
			b.WriteByte(name[i])
			continue
		}
		if i+3 > len(name) {
			return "", fmt.Errorf("bad escape in %q", name)
		}
		c, err := hex.DecodeString(name[i+1 : i+3])
		if err != nil {
			return "", fmt.Errorf("bad escape in %q", name)
		}
		b.WriteByte(c[0])
		i += 2
	}
	return b.String(), nil
}

// setObject records o's size, time, ETag, content type and metadata in n.
func setObject(n *Node, o Object) {
	n.Size = uint64(o.Size)
	n.ModTime, n.ATime, n.CTime = o.LastModified, o.LastModified, o.LastModified
	n.Xattrs = nil
	add := func(name, value string) {
		if value != "" {
			n.Xattrs = append(n.Xattrs, Xattr{Name: Name(name), Value: []byte(value)})
		}
	}
	add(xattrETag, o.ETag)
	add(xattrContentType, o.ContentType)
	for k, v := range o.Metadata {
		n.Xattrs = append(n.Xattrs, Xattr{Name: Name(xattrMetaPrefix + strings.ToLower(k)), Value: []byte(v)})
	}
	// Sorted, so that an unchanged object gives an equal node.
	slices.SortFunc(n.Xattrs, func(a, b Xattr) int { return strings.Compare(string(a.Name), string(b.Name)) })
}

func xattr(n *Node, name string) string {
	for _, x := range n.Xattrs {
		if string(x.Name) == name {
			return string(x.Value)
		}
	}
	return ""
}

// NodeObject returns the object that the file n at path p of a snapshot of
// objects holds (its key, size, time, ETag, content type and metadata).
func NodeObject(p string, n *Node) (Object, error) {
	key, err := ObjectKey(p)
	if err != nil {
		return Object{}, err
	}
	o := Object{Key: key, Size: int64(n.Size), LastModified: n.ModTime}
	for _, x := range n.Xattrs {
		name := string(x.Name)
		switch {
		case name == xattrETag:
			o.ETag = string(x.Value)
		case name == xattrContentType:
			o.ContentType = string(x.Value)
		case strings.HasPrefix(name, xattrMetaPrefix):
			if o.Metadata == nil {
				o.Metadata = map[string]string{}
			}
			o.Metadata[strings.TrimPrefix(name, xattrMetaPrefix)] = string(x.Value)
		}
	}
	return o, nil
}

// WalkObjects calls fn for every file below tree, a snapshot of objects,
// with the object it holds and a reader of its content, in tree order.
// Directories hold no object of their own.
func WalkObjects(ctx context.Context, store *pack.Store, tree repo.ID, fn func(o Object, r io.Reader) error) error {
	return Walk(ctx, store, tree, func(p string, n *Node) error {
		if n.Type != TypeFile {
			return nil
		}
		o, err := NodeObject(p, n)
		if err != nil {
			return err
		}
		return fn(o, &contentReader{ctx: ctx, store: store, ids: n.Content})
	})
}

// contentReader reads a file's content from the repository, one blob at
// a time.
type contentReader struct {
	ctx   context.Context
	store *pack.Store
	ids   []repo.ID
	buf   []byte
	off   int
}

func (r *contentReader) Read(p []byte) (int, error) {
	for r.off == len(r.buf) {
		if len(r.ids) == 0 {
			return 0, io.EOF
		}
		b, err := r.store.LoadBlob(r.ctx, repo.DataBlob, r.ids[0], r.buf[:0])
		if err != nil {
			return 0, fmt.Errorf("load data blob %s: %w", r.ids[0].Short(), err)
		}
		r.buf, r.off, r.ids = b, 0, r.ids[1:]
	}
	n := copy(p, r.buf[r.off:])
	r.off += n
	return n, nil
}
