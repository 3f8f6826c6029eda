package snapshot

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cairn-backup/cairn/chunk"
	"github.com/cairn-backup/cairn/pack"
	"github.com/cairn-backup/cairn/repo"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"
)

// ProgramVersion is recorded in every snapshot; main sets it.
var ProgramVersion = "dev"

// BackupOptions describe one backup.
type BackupOptions struct {
	Paths         []string // what to back up; recorded as absolute, cleaned paths
	Excludes      []string // restic pattern rules (see filter.go)
	IExcludes     []string // the same, case-insensitive
	OneFileSystem bool
	Parent        *Snapshot // nil: no parent, every file is read
	Force         bool      // read every file even when the parent says it is unchanged

	Hostname, Username string
	Tags               []string
	Time               time.Time
	Cluster, Component string
	Run                string

	Stdin     io.Reader // when set, Paths is ignored and Stdin becomes the one file StdinName
	StdinName string

	DryRun   bool // read and hash everything, store nothing
	Reporter Reporter
	// ReadConcurrency is how many files are read at once (default: twice
	// the cores, at least 4: a reader waits for its file's last chunks to be
	// stored, and small files must keep every core busy meanwhile).
	ReadConcurrency int
}

// Progress is a running total, reported now and then during a backup or restore.
type Progress struct {
	Files, Dirs int
	Bytes       int64 // content bytes processed
	TotalFiles  int   // known total, 0 while unknown
	TotalBytes  int64
	Errors      int
	Current     string
	Elapsed     time.Duration
}

// Reporter hears about a backup or restore as it goes. Methods may be called
// from several goroutines at once.
type Reporter interface {
	Progress(p Progress)
	// Error reports an entry that could not be read or written. The
	// operation goes on; the command's exit code says that something failed.
	Error(path string, err error)
}

// ErrPartial is returned (wrapped) by Backup when the snapshot was saved but
// some files could not be read.
var ErrPartial = errors.New("some files could not be read")

// ErrNoPaths means none of the paths to back up exists.
var ErrNoPaths = errors.New("none of the paths to back up could be read")

// future is an entry whose node is known once done is closed; a nil node
// means the entry was dropped (it could not be read).
type future struct {
	done chan struct{}
	node *Node
	tree *Tree // a directory's listing, as saved
}

func newFuture() *future { return &future{done: make(chan struct{})} }

func resolved(n *Node) *future {
	f := &future{done: make(chan struct{}), node: n}
	close(f.done)
	return f
}

func (f *future) resolve(n *Node) { f.node = n; close(f.done) }

func (f *future) ready() bool {
	select {
	case <-f.done:
		return true
	default:
		return false
	}
}

func (f *future) wait(ctx context.Context) (*Node, error) {
	select {
	case <-f.done:
		return f.node, nil
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	}
}

type fileJob struct {
	file io.ReadCloser // nil: read src instead
	src  io.Reader
	path string
	node *Node
	prev *Node
	fut  *future
	lane int // of the walker that found the file (pack.Store.SaveBlobIn)
}

type blobJob struct {
	data *[]byte
	id   *repo.ID
	lane int
	wg   *sync.WaitGroup
	err  *atomic.Pointer[error]
}

// cores sizes the worker pools: GOMAXPROCS as the program starts, before
// cmd/cairn adds a processor for workers blocked in the kernel, which would
// only make more buffers in flight.
var cores = runtime.GOMAXPROCS(0)

type archiver struct {
	store *pack.Store
	opts  BackupOptions
	cfg   repo.Config
	excl  []*Patterns
	fail  context.CancelCauseFunc

	files chan fileJob
	blobs chan blobJob
	// lanes holds the free lanes (1 and up) of directories walked on their
	// own goroutines, whose files fill packs of their own; the first walker
	// has lane 0. walking counts those goroutines, which may send to files.
	lanes   chan int
	walking sync.WaitGroup
	bufs    sync.Pool

	mu      sync.Mutex
	summary Summary
	bytes   atomic.Int64
	nfiles  atomic.Int64
	ndirs   atomic.Int64
	nerrs   atomic.Int64
	current atomic.Pointer[string]
}

// Backup archives opts.Paths (or opts.Stdin) into store and saves a
// snapshot, unless DryRun. The returned snapshot has ID and Summary set.
// When some paths could not be read the snapshot is still saved and the
// error wraps ErrPartial. It runs store.WithUploader itself, so that the
// snapshot is written only after every pack and index file it needs.
func Backup(ctx context.Context, store *pack.Store, opts BackupOptions) (*Snapshot, error) {
	start := time.Now()
	a := newArchiver(store, opts)
	if opts.ReadConcurrency <= 0 {
		a.opts.ReadConcurrency = max(4, 2*cores)
	}
	for i, list := range [][]string{opts.Excludes, opts.IExcludes} {
		p, err := ParsePatterns(list, i == 1)
		if err != nil {
			return nil, err
		}
		if !p.Empty() {
			a.excl = append(a.excl, p)
		}
	}
	if a.opts.StdinName == "" {
		a.opts.StdinName = "stdin"
	}
	parentTree, before, err := a.prepare(ctx)
	if err != nil {
		return nil, err
	}

	var rootTree *Tree
	var paths []string
	var rootID repo.ID
	err = store.WithUploader(ctx, pack.Options{}, func(ctx context.Context) error {
		var err error
		if rootTree, paths, err = a.run(ctx, start, parentTree); err != nil {
			return err
		}
		rootID, err = SaveTree(ctx, store, rootTree)
		return err
	})
	if err != nil {
		return nil, err
	}

	return a.save(ctx, start, before, rootID, paths)
}

// newArchiver returns an archiver storing into store, its chunk buffers
// pooled.
func newArchiver(store *pack.Store, opts BackupOptions) *archiver {
	a := &archiver{store: store, opts: opts, cfg: store.Repo().Config()}
	a.bufs.New = func() any { b := make([]byte, 0, 2<<20); return &b }
	return a
}

// newChunker returns a chunker with the repository's chunk sizes, one per
// reading goroutine.
func (a *archiver) newChunker() *chunk.Chunker {
	return chunk.New(a.cfg.Polynomial, a.cfg.ChunkMin, a.cfg.ChunkMax, a.cfg.ChunkAvgBits)
}

// prepare readies the store for a backup and loads the parent's root tree,
// if there is a parent. It returns the store's counts before the backup,
// from which save computes what it added.
func (a *archiver) prepare(ctx context.Context) (*Tree, pack.Stats, error) {
	a.store.SetDryRun(a.opts.DryRun)
	before := a.store.Stats()
	if a.opts.Parent == nil {
		return nil, before, nil
	}
	t, err := LoadTree(ctx, a.store, a.opts.Parent.Tree)
	if err != nil {
		return nil, before, fmt.Errorf("load parent snapshot %s: %w", a.opts.Parent.ID.Short(), err)
	}
	return t, before, nil
}

// save fills in the summary and saves the snapshot of tree root (unless a
// dry run), for Backup and BackupObjects.
func (a *archiver) save(ctx context.Context, start time.Time, before pack.Stats, root repo.ID, paths []string) (*Snapshot, error) {
	after := a.store.Stats()
	a.summary.DataBlobs = after.Blobs[repo.DataBlob] - before.Blobs[repo.DataBlob]
	a.summary.TreeBlobs = after.Blobs[repo.TreeBlob] - before.Blobs[repo.TreeBlob]
	for t := range after.RawBytes {
		a.summary.DataAdded += after.RawBytes[t] - before.RawBytes[t]
		a.summary.DataAddedPacked += after.PackedSize[t] - before.PackedSize[t]
	}
	a.summary.TotalBytesProcessed = a.bytes.Load()
	a.summary.Errors = int(a.nerrs.Load())
	a.summary.DurationSeconds = time.Since(start).Seconds()

	opts := a.opts
	username, _ := repo.Whoami()
	if opts.Username != "" {
		username = opts.Username
	}
	sn := &Snapshot{
		Time: opts.Time, Tree: root, Paths: paths, Hostname: opts.Hostname,
		Username: username, UID: uint32(os.Getuid()), GID: uint32(os.Getgid()),
		Tags: nonNil(opts.Tags), Excludes: append(slices.Clone(opts.Excludes), opts.IExcludes...),
		Cluster: opts.Cluster, Component: opts.Component, Run: opts.Run,
		ProgramVersion: ProgramVersion, Summary: &a.summary,
	}
	if sn.Time.IsZero() {
		sn.Time = start
	}
	if opts.Parent != nil {
		pid := opts.Parent.ID
		sn.Parent = &pid
	}
	if opts.DryRun {
		return sn, a.partialErr()
	}
	// Every pack and index file is durable now: the snapshot may name them.
	if _, err := Save(ctx, a.store.Repo(), sn); err != nil {
		return nil, fmt.Errorf("save snapshot: %w", err)
	}
	return sn, a.partialErr()
}

// run walks the source with the worker pools and returns the root tree.
func (a *archiver) run(ctx context.Context, start time.Time, parentTree *Tree) (*Tree, []string, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	a.fail = cancel
	a.files = make(chan fileJob)
	g, gctx := errgroup.WithContext(ctx)
	a.startWorkers(gctx, g, a.fileWorker)
	stopProgress := a.startProgress(start)
	defer stopProgress()

	var rootTree *Tree
	var paths []string
	a.lanes = make(chan int, min(8, 2*cores))
	for lane := 1; lane <= cap(a.lanes); lane++ {
		a.lanes <- lane
	}
	g.Go(func() error {
		defer close(a.files)
		defer a.walking.Wait() // no walker may send to a closed files
		var err error
		if a.opts.Stdin != nil {
			rootTree, err = a.archiveStdin(gctx)
			paths = []string{"/" + a.opts.StdinName}
		} else {
			rootTree, paths, err = a.archivePaths(gctx, parentTree)
		}
		return err
	})
	if err := g.Wait(); err != nil {
		return nil, nil, err
	}
	// A directory goroutine that failed cancelled ctx with its cause.
	if err := context.Cause(ctx); err != nil {
		return nil, nil, err
	}
	return rootTree, paths, nil
}

// startWorkers starts the readers (read, ReadConcurrency of them) and a
// blob worker per core in g; blobs is closed once the readers are done.
func (a *archiver) startWorkers(ctx context.Context, g *errgroup.Group, read func(context.Context) error) {
	a.blobs = make(chan blobJob)
	var readers sync.WaitGroup
	for range a.opts.ReadConcurrency {
		readers.Add(1)
		g.Go(func() error { defer readers.Done(); return read(ctx) })
	}
	for range cores {
		g.Go(func() error { return a.blobWorker(ctx) })
	}
	go func() { readers.Wait(); close(a.blobs) }()
}

func (a *archiver) partialErr() error {
	if n := a.nerrs.Load(); n > 0 {
		return fmt.Errorf("%d entries: %w", n, ErrPartial)
	}
	return nil
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

func (a *archiver) report(path string, err error) {
	a.nerrs.Add(1)
	if a.opts.Reporter != nil {
		a.opts.Reporter.Error(path, err)
	}
}

func (a *archiver) startProgress(start time.Time) func() {
	if a.opts.Reporter == nil {
		return func() {}
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	send := func() {
		p := Progress{Files: int(a.nfiles.Load()), Dirs: int(a.ndirs.Load()), Bytes: a.bytes.Load(),
			Errors: int(a.nerrs.Load()), Elapsed: time.Since(start)}
		if c := a.current.Load(); c != nil {
			p.Current = *c
		}
		a.opts.Reporter.Progress(p)
	}
	go func() {
		defer close(done)
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				send()
			case <-stop:
				send()
				return
			}
		}
	}()
	return func() { close(stop); <-done }
}

func (a *archiver) excluded(path string, isDir bool) bool {
	for _, p := range a.excl {
		if p.Match(path, isDir) {
			return true
		}
	}
	return false
}

// archiveStdin stores the reader as the one file of the snapshot.
func (a *archiver) archiveStdin(ctx context.Context) (*Tree, error) {
	name := a.opts.StdinName
	if err := ValidName([]byte(name)); err != nil {
		return nil, fmt.Errorf("stdin file name: %w", err)
	}
	now := time.Now()
	n := &Node{Name: Name(name), Type: TypeFile, Mode: 0o644, UID: uint32(os.Getuid()), GID: uint32(os.Getgid()),
		ModTime: now, ATime: now, CTime: now}
	n.User, n.Group = lookupNames(n.UID, n.GID)
	f := newFuture()
	select {
	case a.files <- fileJob{src: a.opts.Stdin, path: "/" + name, node: n, fut: f}:
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	}
	node, err := f.wait(ctx)
	if err != nil {
		return nil, err
	}
	if node == nil {
		return nil, fmt.Errorf("read standard input: %w", ErrNoPaths)
	}
	return &Tree{Nodes: []*Node{node}}, nil
}

// vdir is a directory on the way from / to the paths being backed up.
type vdir struct {
	children map[string]*vdir
	target   bool // this path itself is backed up
}

// archivePaths backs up each path under a synthetic root that recreates the
// directories leading to it.
func (a *archiver) archivePaths(ctx context.Context, parentRoot *Tree) (*Tree, []string, error) {
	var paths []string
	for _, p := range a.opts.Paths {
		abs, err := filepath.Abs(p)
		if err != nil {
			return nil, nil, fmt.Errorf("path %s: %w", p, err)
		}
		paths = append(paths, abs)
	}
	sort.Strings(paths)
	paths = slices.Compact(paths)
	root := &vdir{children: map[string]*vdir{}}
	var kept []string
	for _, p := range paths {
		if _, err := os.Lstat(p); err != nil {
			a.report(p, err)
			continue
		}
		kept = append(kept, p)
		d := root
		for _, el := range strings.Split(strings.Trim(p, "/"), "/") {
			if el == "" {
				continue
			}
			if d.target {
				break // inside a path already backed up
			}
			c := d.children[el]
			if c == nil {
				c = &vdir{children: map[string]*vdir{}}
				d.children[el] = c
			}
			d = c
		}
		d.target = true
		d.children = nil
	}
	if len(kept) == 0 {
		return nil, nil, ErrNoPaths
	}
	if root.target {
		// Backing up "/" itself: its entries are the root tree.
		fd, err := openAt(unix.AT_FDCWD, "/", unix.O_RDONLY|unix.O_DIRECTORY)
		if err != nil {
			return nil, nil, fmt.Errorf("open /: %w", err)
		}
		defer unix.Close(fd)
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			return nil, nil, fmt.Errorf("stat /: %w", err)
		}
		fut, err := a.saveDir(ctx, fd, 0, "", nodeFromStat([]byte("/"), &st), parentRoot, st.Dev, nil)
		if err != nil {
			return nil, nil, err
		}
		if _, err := fut.wait(ctx); err != nil {
			return nil, nil, err
		}
		return fut.tree, kept, nil
	}
	nodes, err := a.saveVdir(ctx, root, "", parentRoot)
	if err != nil {
		return nil, nil, err
	}
	return &Tree{Nodes: nodes}, kept, nil
}

// saveVdir archives the children of a synthetic directory, waiting for them.
func (a *archiver) saveVdir(ctx context.Context, d *vdir, path string, parent *Tree) ([]*Node, error) {
	names := make([]string, 0, len(d.children))
	for name := range d.children {
		names = append(names, name)
	}
	sort.Strings(names)
	var futs []*future
	for _, name := range names {
		c := d.children[name]
		p := path + "/" + name
		var prev *Node
		if parent != nil {
			prev = parent.Find([]byte(name))
		}
		if c.target {
			dirfd, err := unix.Open(filepath.Dir(p), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
			if err != nil {
				a.report(p, err)
				continue
			}
			st, err := lstatAt(dirfd, name)
			if err != nil {
				unix.Close(dirfd)
				a.report(p, err)
				continue
			}
			f, err := a.saveEntry(ctx, dirfd, 0, name, p, prev, st.Dev)
			unix.Close(dirfd)
			if err != nil {
				return nil, err
			}
			futs = append(futs, f)
			continue
		}
		// A directory on the way: its own metadata, its chosen children.
		st, err := lstatAt(unix.AT_FDCWD, p)
		if err != nil {
			a.report(p, err)
			continue
		}
		n := nodeFromStat([]byte(name), &st)
		n.ATime = time.Time{} // reading the way down must not make every run differ
		var prevTree *Tree
		if prev != nil && prev.Type == TypeDir {
			prevTree, _ = LoadTree(ctx, a.store, *prev.Subtree)
		}
		children, err := a.saveVdir(ctx, c, p, prevTree)
		if err != nil {
			return nil, err
		}
		t := &Tree{Nodes: children}
		id, err := SaveTree(ctx, a.store, t)
		if err != nil {
			return nil, err
		}
		n.Subtree = &id
		futs = append(futs, resolved(n))
	}
	var nodes []*Node
	for _, f := range futs {
		n, err := f.wait(ctx)
		if err != nil {
			return nil, err
		}
		if n != nil {
			nodes = append(nodes, n)
		}
	}
	return nodes, nil
}

// saveEntry archives one directory entry found in dirfd.
func (a *archiver) saveEntry(ctx context.Context, dirfd, lane int, name, path string, prev *Node, dev uint64) (*future, error) {
	st, err := lstatAt(dirfd, name)
	if err != nil {
		a.report(path, err)
		return resolved(nil), nil
	}
	isDir := st.Mode&unix.S_IFMT == unix.S_IFDIR
	if a.excluded(path, isDir) {
		return resolved(nil), nil
	}
	n := nodeFromStat([]byte(name), &st)
	if prev != nil && prev.Type != n.Type {
		prev = nil
	}
	// Setting an xattr changes ctime: the parent's list still holds.
	keepXattrs := prev != nil && !a.opts.Force && sameInode(n, prev)
	if keepXattrs {
		n.Xattrs = prev.Xattrs
	} else if n.Type != TypeFile && n.Type != TypeDir {
		// Files and directories are opened anyway: theirs are read
		// through the descriptor (readXattrsFd), without another path walk.
		if n.Xattrs, err = readXattrs(dirfd, name); err != nil {
			a.report(path, err) // the entry itself is kept
		}
	}
	switch n.Type {
	case TypeSymlink:
		if n.Link, err = readlinkAt(dirfd, name); err != nil {
			a.report(path, err)
			return resolved(nil), nil
		}
		a.nfiles.Add(1)
		a.count(prev, prev != nil && !bytes.Equal(prev.Link, n.Link))
		return resolved(n), nil
	case TypeFile:
		return a.saveFile(ctx, dirfd, lane, name, path, n, prev, !keepXattrs)
	case TypeDir:
		var prevTree *Tree
		if prev != nil {
			if prevTree, err = LoadTree(ctx, a.store, *prev.Subtree); err != nil {
				prevTree = nil // an unreadable parent tree only costs a re-read
			}
		}
		if a.opts.OneFileSystem && st.Dev != dev {
			if !keepXattrs {
				if n.Xattrs, err = readXattrs(dirfd, name); err != nil {
					a.report(path, err)
				}
			}
			// A mount point: kept as an empty directory, like restic.
			empty, err := SaveTree(ctx, a.store, &Tree{})
			if err != nil {
				return nil, err
			}
			n.Subtree = &empty
			return resolved(n), nil
		}
		fd, err := openAt(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY)
		if err != nil {
			a.report(path, err)
			return resolved(nil), nil
		}
		if !keepXattrs {
			if n.Xattrs, err = readXattrsFd(fd); err != nil {
				a.report(path, err)
			}
		}
		select {
		case own := <-a.lanes:
			// A free walker takes the directory: trees of many small
			// directories are walked on several cores.
			out := newFuture()
			a.walking.Add(1)
			go func() {
				defer a.walking.Done()
				defer func() { a.lanes <- own }()
				defer unix.Close(fd)
				f, err := a.saveDir(ctx, fd, own, path, n, prevTree, dev, prev)
				if err != nil {
					a.fail(err)
					out.resolve(nil)
					return
				}
				go func() {
					node, _ := f.wait(ctx)
					out.tree = f.tree
					out.resolve(node)
				}()
			}()
			return out, nil
		default:
			defer unix.Close(fd)
			return a.saveDir(ctx, fd, lane, path, n, prevTree, dev, prev)
		}
	default:
		a.nfiles.Add(1)
		a.count(prev, prev != nil && prev.Rdev != n.Rdev)
		return resolved(n), nil
	}
}

func (a *archiver) count(prev *Node, changed bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	switch {
	case prev == nil:
		a.summary.FilesNew++
	case changed:
		a.summary.FilesChanged++
	default:
		a.summary.FilesUnmodified++
	}
	a.summary.TotalFilesProcessed++
}

// saveDir archives the directory open as fd. The returned future resolves
// once every entry below is stored and the directory's tree is saved; the
// walk goes on meanwhile.
func (a *archiver) saveDir(ctx context.Context, fd, lane int, path string, n *Node, prevTree *Tree, dev uint64, prev *Node) (*future, error) {
	names, err := readDirNames(fd)
	if err != nil {
		a.report(path, err)
		return resolved(nil), nil
	}
	sort.Strings(names) // byte order, as trees are stored
	a.ndirs.Add(1)
	futs := make([]*future, 0, len(names))
	for _, name := range names {
		var pn *Node
		if prevTree != nil {
			pn = prevTree.Find([]byte(name))
		}
		f, err := a.saveEntry(ctx, fd, lane, name, path+"/"+name, pn, dev)
		if err != nil {
			return nil, err
		}
		futs = append(futs, f)
	}
	out := newFuture()
	finish := func() {
		t := &Tree{Nodes: make([]*Node, 0, len(futs))}
		for _, f := range futs {
			c, err := f.wait(ctx)
			if err != nil {
				out.resolve(nil)
				return
			}
			if c != nil {
				t.Nodes = append(t.Nodes, c)
			}
		}
		var id repo.ID
		if prevTree != nil && prev != nil && t.Equal(prevTree) {
			// Unchanged: the parent's tree blob, loaded a moment ago, is this one.
			id = *prev.Subtree
		} else if id, err = SaveTree(ctx, a.store, t); err != nil {
			a.fail(fmt.Errorf("save tree of %s: %w", path, err))
			out.resolve(nil)
			return
		}
		n.Subtree = &id
		a.mu.Lock()
		switch {
		case prev == nil:
			a.summary.DirsNew++
		case *prev.Subtree != id:
			a.summary.DirsChanged++
		default:
			a.summary.DirsUnmodified++
		}
		a.mu.Unlock()
		out.tree = t
		out.resolve(n)
	}
	pending := false
	for _, f := range futs {
		if !f.ready() {
			pending = true
			break
		}
	}
	if pending {
		go finish() // waits for its files; bounded by the reader queue
	} else {
		finish()
	}
	return out, nil
}

// sameInode reports whether prev describes the same, unmodified inode as n:
// same inode number, size, mtime and ctime.
func sameInode(n, prev *Node) bool {
	return prev.Size == n.Size && prev.Inode == n.Inode &&
		prev.ModTime.Equal(n.ModTime) && prev.CTime.Equal(n.CTime)
}

// unchanged reports whether the parent's node for a file can stand in for
// reading it again: the same inode, unmodified, and all its content still
// in the index.
func (a *archiver) unchanged(n, prev *Node) bool {
	if prev == nil || a.opts.Force || !sameInode(n, prev) {
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

func (a *archiver) saveFile(ctx context.Context, dirfd, lane int, name, path string, n, prev *Node, readX bool) (*future, error) {
	a.nfiles.Add(1)
	if a.unchanged(n, prev) {
		n.Content = prev.Content
		a.bytes.Add(int64(n.Size))
		a.count(prev, false)
		return resolved(n), nil
	}
	fd, err := openAt(dirfd, name, unix.O_RDONLY)
	if err != nil {
		a.report(path, err)
		return resolved(nil), nil
	}
	if readX {
		if n.Xattrs, err = readXattrsFd(fd); err != nil {
			a.report(path, err)
		}
	}
	f := newFuture()
	select {
	case a.files <- fileJob{file: fdFile(fd), path: path, node: n, prev: prev, fut: f, lane: lane}:
		return f, nil
	case <-ctx.Done():
		unix.Close(fd)
		return nil, context.Cause(ctx)
	}
}

// fileWorker reads files, chunks them and hands the chunks to the blob
// workers. Files smaller than one chunk are stored right here: a hand-off
// would cost more than it spreads.
func (a *archiver) fileWorker(ctx context.Context) error {
	ch := a.newChunker()
	for job := range a.files {
		a.current.Store(&job.path)
		var r io.Reader = job.src
		if job.file != nil {
			r = job.file
		}
		spread := job.file == nil || job.node.Sparse || job.node.Size >= uint64(a.cfg.ChunkMin)
		var content []repo.ID
		var size int64
		var readErr, err error
		if spread {
			content, size, readErr, err = a.readContent(ctx, ch, job.lane, r, true)
		} else {
			content, size, readErr, err = a.readSmall(ctx, ch, job.lane, job.file, job.node.Size)
		}
		if job.file != nil {
			job.file.Close()
		}
		if err != nil {
			job.fut.resolve(nil)
			return err
		}
		if readErr != nil {
			a.report(job.path, readErr)
			job.fut.resolve(nil)
			continue
		}
		job.node.Content = content
		job.node.Size = uint64(size)
		a.count(job.prev, true)
		job.fut.resolve(job.node)
	}
	return nil
}

// readSmall stores a file that stat found smaller than the minimum chunk
// size (statSize bytes), read straight into the blob buffer: the chunker
// would copy it through a buffer of its own only to find no cut. A file that
// has since grown to the minimum goes through the chunker after all.
func (a *archiver) readSmall(ctx context.Context, ch *chunk.Chunker, lane int, f io.Reader, statSize uint64) (content []repo.ID, size int64, readErr, err error) {
	bp := a.bufs.Get().(*[]byte)
	defer a.bufs.Put(bp)
	minSize := int(a.cfg.ChunkMin)
	*bp = slices.Grow((*bp)[:0], minSize)
	buf := (*bp)[:minSize]
	// A regular file reads short only at its end, so one read that returns
	// the size stat gave has read it all: the read that would return EOF is
	// spared, a system call per small file.
	n, rerr := f.Read(buf)
	if rerr == nil && (n == len(buf) || uint64(n) != statSize) {
		var more int
		more, rerr = io.ReadFull(f, buf[n:])
		n += more
	}
	data := buf[:n]
	switch {
	case rerr != nil && !errors.Is(rerr, io.EOF) && !errors.Is(rerr, io.ErrUnexpectedEOF):
		return nil, 0, rerr, nil
	case n == len(buf):
		return a.readContent(ctx, ch, lane, io.MultiReader(bytes.NewReader(data), f), false)
	case n == 0:
		return []repo.ID{}, 0, nil, nil // as the chunker gives it: no chunks
	}
	a.bytes.Add(int64(n))
	id, _, err := a.store.SaveBlobIn(ctx, lane, repo.DataBlob, data)
	if err != nil {
		return nil, 0, nil, err
	}
	return []repo.ID{id}, int64(n), nil, nil
}

// readContent chunks r and stores the chunks. readErr is a failure of the
// source (the file is skipped); err is fatal (the repository failed).
func (a *archiver) readContent(ctx context.Context, ch *chunk.Chunker, lane int, r io.Reader, spread bool) (content []repo.ID, size int64, readErr, err error) {
	ch.Reset(r)
	var wg sync.WaitGroup
	var firstErr atomic.Pointer[error]
	var ids []*repo.ID
	for {
		bp := a.bufs.Get().(*[]byte)
		data, rerr := ch.Next((*bp)[:0])
		if rerr == io.EOF {
			a.bufs.Put(bp)
			break
		}
		if rerr != nil {
			a.bufs.Put(bp)
			readErr = rerr
			break
		}
		*bp = data
		size += int64(len(data))
		a.bytes.Add(int64(len(data)))
		id := new(repo.ID)
		ids = append(ids, id)
		if !spread {
			*id, _, err = a.store.SaveBlobIn(ctx, lane, repo.DataBlob, data)
			a.bufs.Put(bp)
			if err != nil {
				wg.Wait()
				return nil, 0, nil, err
			}
			continue
		}
		wg.Add(1)
		select {
		case a.blobs <- blobJob{data: bp, id: id, lane: lane, wg: &wg, err: &firstErr}:
		case <-ctx.Done():
			wg.Done()
			a.bufs.Put(bp)
			wg.Wait()
			return nil, 0, nil, context.Cause(ctx)
		}
	}
	wg.Wait()
	if e := firstErr.Load(); e != nil {
		return nil, 0, nil, *e
	}
	if readErr != nil {
		return nil, 0, readErr, nil
	}
	content = make([]repo.ID, len(ids))
	for i, id := range ids {
		content[i] = *id
	}
	return content, size, nil, nil
}

func (a *archiver) blobWorker(ctx context.Context) error {
	for job := range a.blobs {
		id, _, err := a.store.SaveBlobIn(ctx, job.lane, repo.DataBlob, *job.data)
		*job.id = id
		if err != nil {
			job.err.CompareAndSwap(nil, &err)
		}
		a.bufs.Put(job.data)
		job.wg.Done()
	}
	return nil
}
