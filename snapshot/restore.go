package snapshot

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cairn-backup/cairn/pack"
	"github.com/cairn-backup/cairn/repo"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sync/semaphore"
	"golang.org/x/sys/unix"
)

// Overwrite policies for restore.
const (
	OverwriteAlways    = "always"
	OverwriteIfChanged = "if-changed"
	OverwriteNever     = "never"
)

// RestoreOptions describe one restore.
type RestoreOptions struct {
	Target    string
	Include   []string // restic pattern rules; empty: everything
	Exclude   []string
	Verify    bool   // re-read what was written and compare
	Overwrite string // OverwriteAlways (default), OverwriteIfChanged, OverwriteNever
	Delete    bool   // remove files in the target that the snapshot lacks
	Reporter  Reporter
	// Workers is how many pack reads are served at once (default: twice
	// the cores, at least 4: creating files waits on the journal, and
	// remote loads on the network).
	Workers int
}

// RestoreStats count what a restore did.
type RestoreStats struct {
	Files, Dirs, Others int
	Bytes               int64
	Skipped             int // left alone by the overwrite policy
	Deleted             int
	Verified            int
	Errors              int
}

// ErrRestoreIncomplete is wrapped by Restore's error when some entries failed.
var ErrRestoreIncomplete = errors.New("some entries could not be restored")

// dirState is a directory of the target, created when first needed (an
// --include may select nothing below it).
type dirState struct {
	parent *dirState
	name   string
	node   *Node // nil for the target itself
	path   string
	fd     int     // -1 until opened
	ref    *dirRef // fd, shared with the files queued in it
	// fresh: made by this restore, so no name in it is taken (nothing to
	// look up before creating one)
	fresh bool
	// plainModes: files made in it get the mode asked for, less the umask
	// (it is fresh, as made, and has no default ACL)
	plainModes bool
	// ownGroup: files made in it get the restorer's group (it is fresh, as
	// made, and of that group; as made, it is not set-group-ID)
	ownGroup bool
}

// dirRef is an open directory shared by the walk and the files queued in
// it: the last to let go closes it. The files of a directory need not each
// hold a duplicate of its descriptor.
type dirRef struct {
	fd   int
	refs atomic.Int32
}

// newDirRef returns a reference to fd held by its caller.
func newDirRef(fd int) *dirRef {
	d := &dirRef{fd: fd}
	d.refs.Store(1)
	return d
}

func (d *dirRef) hold() *dirRef {
	d.refs.Add(1)
	return d
}

func (d *dirRef) release() {
	if d.refs.Add(-1) == 0 {
		unix.Close(d.fd)
	}
}

// restoreFile is a regular file of the snapshot: looked up and queued by
// the walk, created by the first worker with content for it (creating a file
// waits on the journal, so the workers do it in parallel), written by any
// number of workers at once and finished by the last.
type restoreFile struct {
	dir   *dirRef // held until it is finished
	name  string
	path  string
	node  *Node
	blobs []repo.PackedBlob // its content, from the index
	slot  bool              // holds one unit of restorer.inFlight
	mode  uint32            // to create it with
	has   created           // what of its metadata it has once created

	mu   sync.Mutex
	fd   int   // -1 until created
	left int   // blobs not yet written
	err  error // the first failure
}

// errAbandoned marks a file of which some content will never be written (the
// restore was cancelled): it is removed without a report.
var errAbandoned = errors.New("restore cancelled")

// create makes the file on first use and returns its descriptor, or the
// file's first failure: a file that failed is not written any further.
func (f *restoreFile) create(prealloc bool) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return -1, f.err
	}
	if f.fd >= 0 {
		return f.fd, nil
	}
	fd, err := createAt(f.dir.fd, f.name, f.mode)
	if err == nil && prealloc && len(f.blobs) > 1 && !f.node.Sparse {
		f.fd = fd // removed by finish
		err = preallocate(fd, int64(f.node.Size))
	}
	if err != nil {
		f.err = err
		return -1, err
	}
	f.fd = fd
	return fd, nil
}

// done counts one blob of f as written, or failed with err; it reports
// whether it was the last, so that the caller, and only it, finishes f.
func (f *restoreFile) done(err error) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err == nil {
		f.err = err
	}
	f.left--
	return f.left == 0
}

// need is one blob of one file.
type need struct {
	file *restoreFile
	i    int   // index in file.blobs
	off  int64 // offset in the file
}

func (n *need) blob() *repo.PackedBlob { return &n.file.blobs[n.i] }

// A window is a run of files in tree order whose content is read together,
// pack by pack. Each of a backup's walkers fills packs of its own in tree
// order, so a window's blobs lie in few packs, close together, and its share
// of each pack is read in one request (a gap of more than readGap starts
// another), whatever number of files it goes to. The larger the window,
// the fewer the requests: the speed benchmark's night-2 tree (63 packs)
// takes 338 requests in windows of up to 1,666 files (an open-file limit of
// 20,000), where batches of 512 files, each read by itself, took 1,588.
type window struct {
	needs []need
	bytes uint64
}

type restorer struct {
	store      *pack.Store
	opts       RestoreOptions
	incl, excl *Patterns
	windows    chan *window // from the walk to the dispatcher
	requests   chan []need  // from the dispatcher to the workers: one pack's, by offset
	// inFlight counts files queued and not finished (filesInFlight). A
	// window reserves room for all its files when it starts, so that windows
	// are full-size however fast files finish.
	inFlight *semaphore.Weighted
	win      *window // being filled by the walk
	reserved int     // the part of win's reservation not yet used
	winFiles int     // when to send win: these grow up to maxFiles
	winBytes uint64
	maxFiles int

	mu       sync.Mutex
	stats    RestoreStats
	links    map[[2]uint64]string // hard-link group → path of its first name, from the target
	later    []pendingLink        // the other names of hard-link groups
	dirsDone []*dirState          // directories in post-order, for their metadata
	bytes    atomic.Int64
	files    atomic.Int64
	target   int
	prealloc bool // reserve the blocks of files of several blobs (preallocates)
	umask    int  // the process's, or -1 if unknown
}

// Restore writes the snapshot's tree under opts.Target. It never writes
// outside the target, whatever names the trees hold: every step opens the
// next directory relative to the last one without following symlinks.
// Errors for single entries go to the Reporter and are counted; the
// returned error wraps ErrRestoreIncomplete when anything failed.
func Restore(ctx context.Context, store *pack.Store, sn *Snapshot, opts RestoreOptions) (RestoreStats, error) {
	switch opts.Overwrite {
	case "":
		opts.Overwrite = OverwriteAlways
	case OverwriteAlways, OverwriteIfChanged, OverwriteNever:
	default:
		return RestoreStats{}, fmt.Errorf("invalid --overwrite %q: want always, if-changed or never", opts.Overwrite)
	}
	if opts.Workers <= 0 {
		opts.Workers = max(4, 2*cores)
	}
	// Three windows at most: one written, one waiting, one being filled.
	inFlight := filesInFlight()
	maxFiles := max(1, inFlight/3)
	r := &restorer{store: store, opts: opts, links: map[[2]uint64]string{},
		inFlight: semaphore.NewWeighted(int64(inFlight)), maxFiles: maxFiles,
		winFiles: min(512, maxFiles), winBytes: 32 << 20}
	var err error
	if r.incl, err = ParsePatterns(opts.Include, false); err != nil {
		return RestoreStats{}, err
	}
	if r.excl, err = ParsePatterns(opts.Exclude, false); err != nil {
		return RestoreStats{}, err
	}
	if err := os.MkdirAll(opts.Target, 0o700); err != nil {
		return RestoreStats{}, fmt.Errorf("create target: %w", err)
	}
	r.target, err = unix.Open(opts.Target, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return RestoreStats{}, fmt.Errorf("open target %s: %w", opts.Target, err)
	}
	defer unix.Close(r.target)
	r.prealloc = preallocates(r.target)
	r.umask = processUmask()

	start := time.Now()
	stopProgress := r.startProgress(start)
	// One window can be written while the walk fills the next and a third
	// waits: the workers need not wait for the walk.
	r.windows, r.requests = make(chan *window, 1), make(chan []need)
	g, gctx := errgroup.WithContext(ctx)
	for range opts.Workers {
		g.Go(func() error { r.worker(gctx); return nil })
	}
	g.Go(func() error { r.dispatch(gctx); return nil })
	g.Go(func() error {
		defer close(r.windows)
		// The walk never lets go of the target, which is closed below.
		root := &dirState{fd: r.target, ref: newDirRef(r.target), path: ""}
		if err := r.restoreDir(gctx, root, sn.Tree, r.incl.Empty()); err != nil {
			r.dropWindow()
			return err
		}
		return r.sendWindow(gctx)
	})
	err = g.Wait()
	if err == nil {
		// Cancelled after the walk: files were abandoned, not written.
		err = ctx.Err()
	}
	if err == nil {
		err = r.makeLinks(ctx)
	}
	stopProgress()
	if err != nil {
		return r.stats, err
	}
	// Directory metadata last, deepest first: writing inside a directory
	// changes its mtime, and a read-only mode would stop the writes. The
	// walk let go of every directory's descriptor when it left it.
	r.applyDirMeta()
	if r.stats.Errors > 0 {
		return r.stats, fmt.Errorf("%d entries: %w", r.stats.Errors, ErrRestoreIncomplete)
	}
	return r.stats, nil
}

func (r *restorer) startProgress(start time.Time) func() {
	if r.opts.Reporter == nil {
		return func() {}
	}
	stop, done := make(chan struct{}), make(chan struct{})
	send := func() {
		r.mu.Lock()
		p := Progress{Files: int(r.files.Load()), Dirs: r.stats.Dirs, Bytes: r.bytes.Load(), Errors: r.stats.Errors, Elapsed: time.Since(start)}
		r.mu.Unlock()
		r.opts.Reporter.Progress(p)
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

func (r *restorer) fail(path string, err error) {
	r.mu.Lock()
	r.stats.Errors++
	r.mu.Unlock()
	if r.opts.Reporter != nil {
		r.opts.Reporter.Error(path, err)
	}
}

func (r *restorer) count(f func(s *RestoreStats)) {
	r.mu.Lock()
	f(&r.stats)
	r.mu.Unlock()
}

// dirChain opens directories of the target one below the other, keeping the
// descriptors of the last chain: callers that go in tree order open each
// directory about once, rather than walking down from the target each time.
type dirChain struct {
	target int
	chain  []*dirState // open directories from the target down
	fds    []int
}

func (c *dirChain) closeFrom(k int) {
	for _, fd := range c.fds[k:] {
		unix.Close(fd)
	}
	c.chain, c.fds = c.chain[:k], c.fds[:k]
}

// open returns a descriptor of d, valid until the next call.
func (c *dirChain) open(d *dirState) (int, error) {
	var want []*dirState
	for p := d; p != nil && p.node != nil; p = p.parent {
		want = append(want, p)
	}
	slices.Reverse(want)
	k := 0
	for k < len(c.chain) && k < len(want) && c.chain[k] == want[k] {
		k++
	}
	c.closeFrom(k)
	for _, p := range want[k:] {
		pfd := c.target
		if len(c.fds) > 0 {
			pfd = c.fds[len(c.fds)-1]
		}
		// O_NOFOLLOW: a symlink planted on the way leads nowhere.
		fd, err := unix.Openat(pfd, p.name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return -1, err
		}
		c.chain, c.fds = append(c.chain, p), append(c.fds, fd)
	}
	if len(c.fds) == 0 {
		return c.target, nil
	}
	return c.fds[len(c.fds)-1], nil
}

// applyDirMeta sets the metadata of every restored directory, deepest first.
func (r *restorer) applyDirMeta() {
	c := &dirChain{target: r.target}
	defer c.closeFrom(0)
	for _, d := range r.dirsDone {
		if d.node == nil {
			continue
		}
		pfd, err := c.open(d.parent)
		if err == nil {
			err = applyMeta(pfd, d.name, d.node)
		}
		if err != nil {
			r.fail(d.path, err)
		}
	}
}

// pendingLink is a later name of a hard-link group, linked once the first
// name's content is written.
type pendingLink struct {
	dir   *dirState
	name  string
	path  string
	first string // path of the first name, from the target
	node  *Node
}

// makeLinks creates the later names of hard-link groups. A group whose first
// name could not be written gets its content written here instead.
func (r *restorer) makeLinks(ctx context.Context) error {
	c := &dirChain{target: r.target}
	defer c.closeFrom(0)
	for _, l := range r.later {
		dfd, err := c.open(l.dir)
		if err == nil {
			if err = r.linkTo(l.first, dfd, l.name); err == nil {
				r.files.Add(1)
				r.count(func(s *RestoreStats) { s.Files++ })
				continue
			}
			var f *restoreFile
			// The chain's own reference keeps dfd the chain's to close.
			if f, err = r.newFile(l.dir, newDirRef(dfd), l.name, l.path, l.node); err == nil {
				if err := r.writeNow(ctx, f); err != nil {
					return err
				}
				continue
			}
		}
		r.fail(l.path, err)
	}
	return nil
}

// open makes sure d exists in the target and returns its descriptor.
func (r *restorer) open(d *dirState) (int, error) {
	if d.fd >= 0 {
		return d.fd, nil
	}
	pfd, err := r.open(d.parent)
	if err != nil {
		return -1, err
	}
	// In a directory this restore made, the name is free.
	var st unix.Stat_t
	err = unix.ENOENT
	if !d.parent.fresh {
		st, err = lstatAt(pfd, d.name)
	}
	switch {
	case err == nil && st.Mode&unix.S_IFMT == unix.S_IFDIR:
		// An existing directory is reused whatever the policy.
	case err == nil && r.opts.Overwrite == OverwriteNever:
		return -1, fmt.Errorf("not a directory in the target, left alone (--overwrite never)")
	case err == nil:
		if err := unix.Unlinkat(pfd, d.name, 0); err != nil {
			return -1, fmt.Errorf("replace: %w", err)
		}
		fallthrough
	default:
		err := unix.Mkdirat(pfd, d.name, 0o700)
		if err != nil && err != unix.EEXIST {
			return -1, fmt.Errorf("mkdir: %w", err)
		}
		d.fresh = err == nil
		r.count(func(s *RestoreStats) { s.Dirs++ })
	}
	// O_NOFOLLOW: a symlink planted where a directory belongs is refused, so
	// nothing below it can land outside the target.
	fd, err := unix.Openat(pfd, d.name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open directory: %w", err)
	}
	d.fd, d.ref = fd, newDirRef(fd)
	if d.fresh && unix.Fstat(fd, &st) == nil {
		// A file system that maps owners (NFS with root_squash) or ignores
		// modes (vfat) shows a directory other than the one asked for: its
		// files get every call, and any refusal is reported.
		asMade := st.Uid == euid && st.Mode&0o7777 == 0o700
		// A new directory takes its parent's default ACL: below a
		// directory without one, there is none to look for.
		d.plainModes = asMade && (d.parent.plainModes || !hasDefaultACL(fd))
		d.ownGroup = asMade && isRoot && st.Gid == egid
	}
	return fd, nil
}

// restoreDir restores the entries of tree id into d. all says that the
// include patterns selected d itself, so everything below is selected.
func (r *restorer) restoreDir(ctx context.Context, d *dirState, id repo.ID, all bool) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	t, err := LoadTree(ctx, r.store, id)
	if err != nil {
		r.fail(d.path+"/", err)
		return nil
	}
	for _, n := range t.Nodes {
		if err := ValidName(n.Name); err != nil { // trees are checked on load; twice is cheap
			r.fail(d.path+"/"+string(n.Name), err)
			continue
		}
		p := d.path + "/" + string(n.Name)
		isDir := n.Type == TypeDir
		if !r.excl.Empty() && r.excl.Match(p, isDir) {
			continue
		}
		sel := all || r.incl.Match(p, isDir)
		if isDir {
			if !sel && !r.incl.ChildMayMatch(p) {
				continue
			}
			c := &dirState{parent: d, name: string(n.Name), node: n, path: p, fd: -1}
			if sel {
				if _, err := r.open(c); err != nil {
					r.fail(p, err)
					continue
				}
			}
			if err := r.restoreDir(ctx, c, *n.Subtree, sel); err != nil {
				return err
			}
			if c.fd >= 0 {
				r.dirsDone = append(r.dirsDone, c)
				c.ref.release()
				c.fd, c.ref = -1, nil
			}
			continue
		}
		if !sel {
			continue
		}
		dfd, err := r.open(d)
		if err != nil {
			r.fail(p, err)
			continue
		}
		if err := r.restoreEntry(ctx, d, dfd, p, n); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			r.fail(p, err)
		}
	}
	if r.opts.Delete && d.fd >= 0 {
		r.deleteExtra(d, t)
	}
	return nil
}

// prepare decides what to do with an existing entry at name: false means
// leave it (the policy says so); true means name is now free.
func (r *restorer) prepare(dfd int, name string, n *Node) (bool, error) {
	st, err := lstatAt(dfd, name)
	if err == unix.ENOENT {
		return true, nil
	}
	if err != nil {
		return false, err
	}
	switch r.opts.Overwrite {
	case OverwriteNever:
		return false, nil
	case OverwriteIfChanged:
		if n.Type == TypeFile && st.Mode&unix.S_IFMT == unix.S_IFREG && uint64(st.Size) == n.Size &&
			time.Unix(st.Mtim.Sec, st.Mtim.Nsec).Equal(n.ModTime) {
			return false, nil
		}
	}
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		return false, fmt.Errorf("a directory is in the way")
	}
	if err := unix.Unlinkat(dfd, name, 0); err != nil {
		return false, fmt.Errorf("replace: %w", err)
	}
	return true, nil
}

func (r *restorer) restoreEntry(ctx context.Context, d *dirState, dfd int, path string, n *Node) error {
	name := string(n.Name)
	free := true
	if !d.fresh { // in a directory this restore made, the name is free
		var err error
		if free, err = r.prepare(dfd, name, n); err != nil {
			return err
		}
	}
	if !free {
		r.count(func(s *RestoreStats) { s.Skipped++ })
		return nil
	}
	switch n.Type {
	case TypeFile:
		if n.Links > 1 {
			key := [2]uint64{n.DeviceID, n.Inode}
			if first, seen := r.links[key]; seen {
				// Linked when the first name's content is written.
				r.later = append(r.later, pendingLink{dir: d, name: name, path: path, first: first, node: n})
				return nil
			}
			r.links[key] = strings.TrimPrefix(path, "/")
		}
		return r.queueFile(ctx, d, name, path, n)
	case TypeSymlink:
		if err := unix.Symlinkat(string(n.Link), dfd, name); err != nil {
			return fmt.Errorf("symlink: %w", err)
		}
	case TypeFIFO:
		if err := unix.Mkfifoat(dfd, name, 0o600); err != nil {
			return fmt.Errorf("mkfifo: %w", err)
		}
	case TypeDev, TypeCharDev:
		if !isRoot {
			return fmt.Errorf("device node: only root can create it")
		}
		mode := uint32(unix.S_IFBLK)
		if n.Type == TypeCharDev {
			mode = unix.S_IFCHR
		}
		if err := unix.Mknodat(dfd, name, mode|0o600, int(n.Rdev)); err != nil {
			return fmt.Errorf("mknod: %w", err)
		}
	case TypeSocket:
		return nil // a socket belongs to a running program; there is nothing to restore
	default:
		return fmt.Errorf("unknown node type %q", n.Type)
	}
	r.count(func(s *RestoreStats) { s.Others++ })
	return applyMeta(dfd, name, n)
}

// linkTo makes name in dfd a hard link to first (a path from the target).
// The path is walked one directory at a time, never through a symlink and
// at any depth (a single linkat stops at PATH_MAX).
func (r *restorer) linkTo(first string, dfd int, name string) error {
	els := strings.Split(first, "/")
	fd := r.target
	defer func() {
		if fd != r.target {
			unix.Close(fd)
		}
	}()
	for _, el := range els[:len(els)-1] {
		nfd, err := unix.Openat(fd, el, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		if fd != r.target {
			unix.Close(fd)
		}
		fd = nfd
	}
	return unix.Linkat(fd, els[len(els)-1], dfd, name, 0)
}

const (
	spanMax     = 2 << 20  // bytes read into memory at once (a larger blob is read whole)
	spanGap     = 64 << 10 // unneeded bytes worth reading into a span rather than skipping
	readGap     = 1 << 20  // unneeded bytes worth reading through rather than making another request
	maxNeeds    = 1 << 17  // blobs in a window, whatever its files: the plan's memory
	maxWinBytes = 1 << 32  // where a window's content limit stops doubling
)

// filesInFlight is how many files may be queued and not finished at once,
// within the limit on open descriptors: each holds two at most (its own
// and its directory's, shared with the directory's other files). Half the
// limit is left for the rest.
func filesInFlight() int {
	limit := uint64(1024)
	var rl unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_NOFILE, &rl) == nil {
		limit = rl.Cur
	}
	return int(min(max(limit/4, 4), 1<<16))
}

// newFile looks up n's content and readies a file of it in d, open as dir.
func (r *restorer) newFile(d *dirState, dir *dirRef, name, path string, n *Node) (*restoreFile, error) {
	blobs, err := r.lookup(n)
	if err != nil {
		return nil, err
	}
	f := &restoreFile{dir: dir.hold(), name: name, path: path, node: n, blobs: blobs, fd: -1, left: len(blobs)}
	f.mode, f.has = r.creation(d, n)
	return f, nil
}

// creation returns the mode to create n's file with in d and what of n's
// metadata the new file has from that alone. A file is made with its own
// permissions when it has its owner already and the umask keeps them;
// otherwise with 0600, and chmod follows the chown: until then its content
// is nobody else's to read, and chown would clear set-ID bits. With
// --verify it is read back by name before its mode is set.
func (r *restorer) creation(d *dirState, n *Node) (uint32, created) {
	// Root's new file is root's, of the directory's group if that is
	// set-group-ID (or the file system says so) and root's group otherwise.
	// Without root, no owner is set.
	has := created{owner: isRoot && d.ownGroup && n.UID == euid && n.GID == egid}
	perm := n.Mode & 0o7777
	if (isRoot && !has.owner) || r.opts.Verify || !d.plainModes || r.umask < 0 ||
		perm&^0o777 != 0 || perm&^uint32(r.umask) != perm {
		return 0o600, has
	}
	has.mode = true
	return perm, has
}

// lookup returns the index entries of n's content, checked against its size.
func (r *restorer) lookup(n *Node) ([]repo.PackedBlob, error) {
	blobs := make([]repo.PackedBlob, len(n.Content))
	var size uint64
	for i, id := range n.Content {
		e, ok := r.store.Index().Lookup(repo.DataBlob, id)
		if !ok {
			return nil, fmt.Errorf("data blob %s: %w", id.Short(), pack.ErrBlobNotFound)
		}
		blobs[i] = e
		size += uint64(e.RawLength)
	}
	if size != n.Size {
		return nil, fmt.Errorf("content is %d bytes, the snapshot says %d", size, n.Size)
	}
	return blobs, nil
}

// needs appends the blobs of f to ns.
func (f *restoreFile) needs(ns []need) []need {
	var off int64
	for i, b := range f.blobs {
		ns = append(ns, need{file: f, i: i, off: off})
		off += int64(b.RawLength)
	}
	return ns
}

// queueFile adds a regular file to the window, sending the window on when it
// is full.
func (r *restorer) queueFile(ctx context.Context, d *dirState, name, path string, n *Node) error {
	if r.win == nil {
		// Wait for files of earlier windows to finish.
		if err := r.inFlight.Acquire(ctx, int64(r.winFiles)); err != nil {
			return err
		}
		r.win, r.reserved = &window{}, r.winFiles
	}
	f, err := r.newFile(d, d.ref, name, path, n)
	if err != nil {
		return err
	}
	if len(f.blobs) == 0 {
		// Written at once, so it holds its descriptors only here.
		return r.writeNow(ctx, f)
	}
	f.slot = true
	r.reserved--
	w := r.win
	w.needs = f.needs(w.needs)
	w.bytes += n.Size
	if r.reserved == 0 || w.bytes >= r.winBytes || len(w.needs) >= maxNeeds {
		return r.sendWindow(ctx)
	}
	return nil
}

// release gives back the unused part of the window's reservation.
func (r *restorer) release() {
	r.inFlight.Release(int64(r.reserved))
	r.reserved = 0
}

// sendWindow hands the window to the dispatcher. Windows start small, so
// that the workers start early, and double up to maxFiles.
func (r *restorer) sendWindow(ctx context.Context) error {
	w := r.win
	if w == nil {
		return nil
	}
	r.win = nil
	r.release()
	select {
	case r.windows <- w:
		r.winFiles, r.winBytes = min(2*r.winFiles, r.maxFiles), min(2*r.winBytes, maxWinBytes)
		return nil
	case <-ctx.Done():
		r.abandon(w.needs)
		return ctx.Err()
	}
}

// dropWindow gives up the files of the window being filled.
func (r *restorer) dropWindow() {
	if r.win != nil {
		r.release()
		r.abandon(r.win.needs)
		r.win = nil
	}
}

// dispatch sorts each window's needs by pack and offset and hands them to
// the workers a request at a time.
func (r *restorer) dispatch(ctx context.Context) {
	defer close(r.requests)
	for w := range r.windows {
		sortNeeds(w.needs)
		for i := 0; i < len(w.needs); {
			j := requestEnd(w.needs, i)
			select {
			case r.requests <- w.needs[i:j]:
				i = j
			case <-ctx.Done():
				r.abandon(w.needs[i:])
				for w := range r.windows {
					r.abandon(w.needs)
				}
				return
			}
		}
	}
}

func sortNeeds(ns []need) {
	slices.SortFunc(ns, func(a, b need) int {
		pa, pb := a.blob(), b.blob()
		if c := bytes.Compare(pa.Pack[:], pb.Pack[:]); c != 0 {
			return c
		}
		return cmp.Compare(pa.Offset, pb.Offset)
	})
}

// requestEnd returns the end of the request starting at ns[i]: the needs of
// one pack, sorted, up to a gap of more than readGap.
func requestEnd(ns []need, i int) int {
	first := ns[i].blob()
	end := int64(first.Offset) + int64(first.Length)
	j := i + 1
	for ; j < len(ns); j++ {
		b := ns[j].blob()
		if b.Pack != first.Pack || int64(b.Offset) > end+readGap {
			break
		}
		end = max(end, int64(b.Offset)+int64(b.Length))
	}
	return j
}

// abandon counts needs as never to be written.
func (r *restorer) abandon(ns []need) {
	for i := range ns {
		if ns[i].file.done(errAbandoned) {
			r.finish(ns[i].file)
		}
	}
}

// worker reads requests until there are none; cancelled, it abandons them.
func (r *restorer) worker(ctx context.Context) {
	var span, plain []byte
	for ns := range r.requests {
		if ctx.Err() != nil {
			r.abandon(ns)
			continue
		}
		span, plain = r.read(ctx, ns, span, plain)
		// A blob can be 8 MiB: buffers grown for one are not kept by every
		// worker for the rest of the restore.
		if cap(span) > spanMax {
			span = nil
		}
		if cap(plain) > spanMax {
			plain = nil
		}
	}
}

// room returns buf, or a new buffer if buf cannot hold n bytes: of spanMax
// bytes at least, so that a worker's buffers are made once and not again for
// every span or blob a little longer than the one before.
func room(buf []byte, n int) []byte {
	if cap(buf) >= n {
		return buf
	}
	return make([]byte, 0, max(n, spanMax))
}

// read makes one request for the needs ns of one pack, sorted by offset,
// and writes each blob wherever it goes; then it counts them done, which
// finishes the files whose last blob they were. It returns its buffers for
// the next call.
func (r *restorer) read(ctx context.Context, ns []need, span, plain []byte) ([]byte, []byte) {
	first, last := ns[0].blob(), ns[len(ns)-1].blob()
	start := int64(first.Offset)
	length := int64(last.Offset) + int64(last.Length) - start
	errs := make([]error, len(ns))
	var written int64
	be, key := r.store.Repo().Backend(), r.store.Repo().Key()
	h := repo.Handle{Type: repo.PackFile, Name: first.Pack.String()}
	// A retried request calls this again from the start: writing the same
	// bytes at the same offsets again is harmless.
	err := be.Load(ctx, h, start, length, func(rd io.Reader) error {
		written = 0
		pos := start
		for i := 0; i < len(ns); {
			if err := ctx.Err(); err != nil {
				return err
			}
			// A span: blobs close together, up to spanMax, read at once.
			b := ns[i].blob()
			s, e := int64(b.Offset), int64(b.Offset)+int64(b.Length)
			j := i + 1
			for ; j < len(ns); j++ {
				b := ns[j].blob()
				bEnd := int64(b.Offset) + int64(b.Length)
				if int64(b.Offset) > e+spanGap || max(e, bEnd)-s > spanMax {
					break
				}
				e = max(e, bEnd)
			}
			for pos < s { // a gap: read through
				span = room(span, int(min(s-pos, spanMax)))
				n, err := io.ReadFull(rd, span[:min(s-pos, int64(cap(span)))])
				if err != nil {
					return err
				}
				pos += int64(n)
			}
			span = room(span, int(e-s))[:e-s]
			if _, err := io.ReadFull(rd, span); err != nil {
				return err
			}
			pos = e
			var openErr error
			for k := i; k < j; k++ {
				nd := &ns[k]
				// Blobs are decrypted in place, so a blob is opened once: the
				// same blob again (in another file, or twice in one) comes
				// right after it, sorted, and shares its result.
				if k == i || nd.blob().ID != ns[k-1].blob().ID {
					b := nd.blob()
					rel := int64(b.Offset) - s
					plain = room(plain, int(b.RawLength))
					var p []byte
					if p, openErr = pack.OpenBlobInPlace(key, *b, span[rel:rel+int64(b.Length)], plain); openErr == nil {
						plain = p
					}
				}
				err := openErr
				if err == nil {
					var fd int
					if fd, err = nd.file.create(r.prealloc); err == nil {
						err = writeAt(fd, plain, nd.off, nd.file.node.Sparse)
					}
				}
				errs[k] = err
				if err == nil {
					written += int64(len(plain))
				}
			}
			i = j
		}
		return nil
	})
	if err != nil {
		if ctx.Err() != nil {
			err = errAbandoned
		} else {
			err = fmt.Errorf("read pack %s: %w", first.Pack.Short(), err)
		}
		for k := range errs {
			errs[k] = err
		}
	}
	r.bytes.Add(written)
	for k := range ns {
		if ns[k].file.done(errs[k]) {
			r.finish(ns[k].file)
		}
	}
	return span, plain
}

// writeNow writes f's content and finishes it, without the workers.
func (r *restorer) writeNow(ctx context.Context, f *restoreFile) error {
	if len(f.blobs) == 0 {
		_, f.err = f.create(false)
		r.finish(f)
		return nil
	}
	ns := f.needs(nil)
	sortNeeds(ns)
	var span, plain []byte
	for i := 0; i < len(ns); {
		j := requestEnd(ns, i)
		if ctx.Err() != nil {
			r.abandon(ns[i:])
			return ctx.Err()
		}
		span, plain = r.read(ctx, ns[i:j], span, plain)
		i = j
	}
	return ctx.Err()
}

// createAt makes a new, empty file, never through a symlink.
func createAt(dirfd int, name string, mode uint32) (int, error) {
	fd, err := unix.Openat(dirfd, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, mode)
	if err != nil {
		return -1, fmt.Errorf("create: %w", err)
	}
	return fd, nil
}

// finish ends a file whose blobs are all done: it sets its length and
// metadata, counts it and closes it, or, if anything failed, reports and
// removes it. Never leave a file with wrong or partial content behind.
func (r *restorer) finish(f *restoreFile) {
	err := f.err
	if err == nil {
		err = r.finishFile(f)
	}
	switch {
	case err == nil:
		r.files.Add(1)
		r.count(func(s *RestoreStats) {
			s.Files++
			s.Bytes += int64(f.node.Size)
		})
	case !errors.Is(err, errAbandoned):
		r.fail(f.path, err)
	}
	if f.fd >= 0 {
		if err != nil {
			_ = unix.Unlinkat(f.dir.fd, f.name, 0)
		}
		unix.Close(f.fd)
	}
	f.dir.release()
	if f.slot {
		r.inFlight.Release(1)
	}
}

// finishFile sets a written file's length and metadata, after verifying its
// content when asked.
func (r *restorer) finishFile(f *restoreFile) error {
	// Only a hole at the end leaves a new file short of its size.
	if f.node.Sparse {
		if err := unix.Ftruncate(f.fd, int64(f.node.Size)); err != nil {
			return fmt.Errorf("truncate: %w", err)
		}
	}
	if r.opts.Verify {
		if err := r.verify(f); err != nil {
			return err
		}
	}
	// Through the descriptor, not the name: a chmod by name would follow a
	// symlink put there since the file was created.
	return applyMetaFd(f.fd, f.node, f.has)
}

// preallocates reports whether files restored into dir get their blocks
// reserved before their content is written: a file of several blobs is
// written out of order, from several packs, and a disk file system given its
// size at once lays it out in one piece and runs out of space before
// writing it, not halfway through. On tmpfs reserving only zeroes pages the
// writes fill anyway.
func preallocates(dir int) bool {
	var st unix.Statfs_t
	return unix.Fstatfs(dir, &st) == nil && st.Type != unix.TMPFS_MAGIC
}

// preallocate reserves size bytes for a new file; a file system that cannot
// is written as it is.
func preallocate(fd int, size int64) error {
	err := unix.Fallocate(fd, 0, 0, size)
	switch {
	case err == nil, errors.Is(err, unix.EOPNOTSUPP), errors.Is(err, unix.ENOSYS), errors.Is(err, unix.EINTR):
		return nil
	}
	return fmt.Errorf("preallocate %d bytes: %w", size, err)
}

const blockSize = 4096

var zeroBlock [blockSize]byte

// writeAt writes data at off of a new file. For a sparse file, pieces that
// are all zeros are skipped (the file is new, so they read as zeros) and
// pieces end at block boundaries of the file, not of the chunk: a chunk
// starting mid-block must not allocate the blocks of the hole around it.
func writeAt(fd int, data []byte, off int64, sparse bool) error {
	if !sparse {
		return pwriteAll(fd, data, off)
	}
	run := -1 // start of the pending run of non-zero pieces
	for i := 0; i < len(data); {
		n := min(len(data)-i, blockSize-int((off+int64(i))%blockSize))
		zero := bytes.Equal(data[i:i+n], zeroBlock[:n])
		if zero && run >= 0 {
			if err := pwriteAll(fd, data[run:i], off+int64(run)); err != nil {
				return err
			}
			run = -1
		}
		if !zero && run < 0 {
			run = i
		}
		i += n
	}
	if run >= 0 {
		return pwriteAll(fd, data[run:], off+int64(run))
	}
	return nil
}

func pwriteAll(fd int, data []byte, off int64) error {
	for len(data) > 0 {
		n, err := unix.Pwrite(fd, data, off)
		if err != nil {
			return fmt.Errorf("write: %w", err)
		}
		data, off = data[n:], off+int64(n)
	}
	return nil
}

// verify re-reads the written file and checks every blob's id.
func (r *restorer) verify(f *restoreFile) error {
	fd, err := unix.Openat(f.dir.fd, f.name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("verify: %w", err)
	}
	defer unix.Close(fd)
	key := r.store.Repo().Key()
	var off int64
	for _, e := range f.blobs {
		buf := make([]byte, e.RawLength)
		if _, err := unix.Pread(fd, buf, off); err != nil {
			return fmt.Errorf("verify: %w", err)
		}
		if repo.ID(key.BlobID(buf)) != e.ID {
			return fmt.Errorf("verify: content at offset %d differs from the snapshot", off)
		}
		off += int64(e.RawLength)
	}
	r.count(func(s *RestoreStats) { s.Verified++ })
	return nil
}

// deleteExtra removes entries of d that the tree lacks (--delete), except
// those the patterns keep out of the restore.
func (r *restorer) deleteExtra(d *dirState, t *Tree) {
	names, err := readDirNames(d.fd)
	if err != nil {
		r.fail(d.path, err)
		return
	}
	for _, name := range names {
		if t.Find([]byte(name)) != nil {
			continue
		}
		p := d.path + "/" + name
		st, err := lstatAt(d.fd, name)
		if err != nil {
			continue
		}
		isDir := st.Mode&unix.S_IFMT == unix.S_IFDIR
		if (!r.excl.Empty() && r.excl.Match(p, isDir)) || (!r.incl.Empty() && !r.incl.Match(p, isDir)) {
			continue
		}
		if err := removeAt(d.fd, name); err != nil {
			r.fail(p, err)
			continue
		}
		r.count(func(s *RestoreStats) { s.Deleted++ })
	}
}

// removeAt removes name in dirfd, with everything below it, never following symlinks.
func removeAt(dirfd int, name string) error {
	err := unix.Unlinkat(dirfd, name, 0)
	if err != unix.EISDIR && err != unix.EPERM {
		return err
	}
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	names, err := readDirNames(fd)
	if err == nil {
		for _, c := range names {
			if err = removeAt(fd, c); err != nil {
				break
			}
		}
	}
	unix.Close(fd)
	if err != nil {
		return err
	}
	return unix.Unlinkat(dirfd, name, unix.AT_REMOVEDIR)
}
