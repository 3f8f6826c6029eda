package snapshot

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cairn-backup/cairn/pack"
	"github.com/cairn-backup/cairn/repo"
	"golang.org/x/sync/errgroup"
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
	// Workers is how many batches of files are written at once (default:
	// twice the cores, at least 4: creating files waits on the journal).
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
	fd     int // -1 until opened
	// fresh: made by this restore, so no name in it is taken (nothing to
	// look up before creating one)
	fresh bool
}

type restoreJob struct {
	dirfd int // a duplicate, owned by the job; -1 in a part
	name  string
	fd    int
	path  string
	node  *Node
	part  *filePart // nil: the whole file
}

// bigFile is a file larger than a batch, created by the walk and written in
// parts by several workers at once: one worker alone would restore a large
// database dump at the speed of one core. The last part to finish finishes
// the file.
type bigFile struct {
	job   restoreJob        // the whole file; its descriptors are shared by the parts
	blobs []repo.PackedBlob // its content, as the walk looked it up

	mu   sync.Mutex
	left int   // parts not done
	err  error // the first part's failure
}

// filePart is the piece of a bigFile one job writes: n content blobs from
// the first one on, at offset off of the file.
type filePart struct {
	file     *bigFile
	first, n int
	off      int64
}

// errAbandoned marks a bigFile of which a part will never be written (the
// restore was cancelled): the file is removed without a report.
var errAbandoned = errors.New("restore cancelled")

// done counts n parts of f as done, with err the failure of any of them; it
// reports whether they were the last (so the caller, and only it, ends the
// file) and the file's first failure.
func (f *bigFile) done(n int, err error) (last bool, first error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err == nil {
		f.err = err
	}
	f.left -= n
	return n > 0 && f.left == 0, f.err
}

// abandon counts n parts of f as never to be written; the last part removes
// the file.
func (f *bigFile) abandon(n int) {
	if last, _ := f.done(n, errAbandoned); last {
		closeJobs([]restoreJob{f.job}, true)
	}
}

type restorer struct {
	store      *pack.Store
	opts       RestoreOptions
	incl, excl *Patterns
	jobs       chan []restoreJob
	batch      []restoreJob // files created by the walk, not yet handed to a worker
	batchBytes uint64
	batchFiles int // files in a full batch (batchFilesFor)

	mu       sync.Mutex
	stats    RestoreStats
	links    map[[2]uint64]string // hard-link group → path of its first name, from the target
	later    []pendingLink        // the other names of hard-link groups
	dirsDone []*dirState          // directories in post-order, for their metadata
	bytes    atomic.Int64
	files    atomic.Int64
	target   int
	prealloc bool // reserve the blocks of files of several blobs (preallocates)
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
	r := &restorer{store: store, opts: opts, links: map[[2]uint64]string{}, batchFiles: batchFilesFor(opts.Workers)}
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

	start := time.Now()
	stopProgress := r.startProgress(start)
	r.jobs = make(chan []restoreJob)
	g, gctx := errgroup.WithContext(ctx)
	for range opts.Workers {
		g.Go(func() error { return r.worker(gctx) })
	}
	g.Go(func() error {
		defer close(r.jobs)
		root := &dirState{fd: r.target, path: ""}
		if err := r.restoreDir(gctx, root, sn.Tree, r.incl.Empty()); err != nil {
			r.dropBatch()
			return err
		}
		return r.sendBatch(gctx)
	})
	err = g.Wait()
	if err == nil {
		err = r.makeLinks(ctx)
	}
	stopProgress()
	if err != nil {
		return r.stats, err
	}
	// Directory metadata last, deepest first: writing inside a directory
	// changes its mtime, and a read-only mode would stop the writes.
	for _, d := range r.dirsDone {
		if d.fd >= 0 && d.fd != r.target {
			unix.Close(d.fd)
			d.fd = -1
		}
	}
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
			var dup int
			if dup, err = unix.Dup(dfd); err == nil {
				job := []restoreJob{{dirfd: dup, name: l.name, fd: -1, path: l.path, node: l.node}}
				if _, _, err = r.writeBatch(ctx, job, nil, nil); err != nil {
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
	d.fd = fd
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
				unix.Close(c.fd)
				c.fd = -1
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
		if n.Size > batchBytes && len(n.Content) > 1 {
			return r.sendParts(ctx, dfd, name, path, n)
		}
		// Creating a file waits on the journal: the workers do it, in parallel.
		dup, err := unix.Dup(dfd)
		if err != nil {
			return err
		}
		r.batch = append(r.batch, restoreJob{dirfd: dup, name: name, fd: -1, path: path, node: n})
		r.batchBytes += n.Size
		if len(r.batch) >= r.batchFiles || r.batchBytes >= batchBytes {
			return r.sendBatch(ctx)
		}
		return nil
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

// A batch is a run of files in tree order. Each of a backup's walkers fills
// packs of its own, in tree order, so a batch's blobs lie in few packs, close
// together: a worker reads each such stretch once rather than one blob at a
// time. Content shared with files elsewhere is read where it was stored. The
// larger the batch, the fewer the reads (a request each from S3): 512 files
// and 32 MiB read the speed benchmark's tree in 1,402 requests, 128 and 8 MiB
// in 2,508.
const (
	batchBytes = 32 << 20 // content bytes in one batch
	spanMax    = 2 << 20  // bytes read from a pack at once (a larger blob is read whole)
	spanGap    = 64 << 10 // unneeded bytes worth reading through rather than seeking past
)

// batchFilesFor is how many files a batch holds, within the limit on open
// descriptors: each file of a batch holds two (its own and its directory's)
// until a worker is done with it, and workers+2 batches are open at once (one
// per worker, one handed over, one being filled). Half the limit is left for
// the rest.
func batchFilesFor(workers int) int {
	limit := uint64(1024)
	var rl unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_NOFILE, &rl) == nil {
		limit = rl.Cur
	}
	n := limit / 2 / uint64(2*(workers+2))
	return int(min(max(n, 4), 512))
}

// sendParts creates a file larger than a batch and queues its content in
// parts of about a batch each.
func (r *restorer) sendParts(ctx context.Context, dfd int, name, path string, n *Node) error {
	blobs, err := r.lookup(n)
	if err != nil {
		return err
	}
	dup, err := unix.Dup(dfd)
	if err != nil {
		return err
	}
	fd, err := createAt(dup, name)
	if err != nil {
		unix.Close(dup)
		return err
	}
	f := &bigFile{job: restoreJob{dirfd: dup, name: name, fd: fd, path: path, node: n}, blobs: blobs}
	if r.prealloc && !n.Sparse {
		if err := preallocate(fd, int64(n.Size)); err != nil {
			closeJobs([]restoreJob{f.job}, true)
			return err
		}
	}
	var parts []*filePart
	for first, off := 0, int64(0); first < len(blobs); {
		k, partSize := first, 0
		for k < len(blobs) && (k == first || partSize+int(blobs[k].RawLength) <= batchBytes) {
			partSize += int(blobs[k].RawLength)
			k++
		}
		parts = append(parts, &filePart{file: f, first: first, n: k - first, off: off})
		first, off = k, off+int64(partSize)
	}
	f.left = len(parts)
	// Each part ends a batch, so that the workers share the file.
	for i, p := range parts {
		r.batch = append(r.batch, restoreJob{dirfd: -1, name: name, fd: fd, path: path, node: n, part: p})
		if err := r.sendBatch(ctx); err != nil {
			f.abandon(len(parts) - i - 1) // never queued
			return err
		}
	}
	return nil
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

// sendBatch hands the files created so far to a worker.
func (r *restorer) sendBatch(ctx context.Context) error {
	if len(r.batch) == 0 {
		return nil
	}
	b := r.batch
	r.batch, r.batchBytes = nil, 0
	select {
	case r.jobs <- b:
		return nil
	case <-ctx.Done():
		closeJobs(b, true)
		return ctx.Err()
	}
}

// dropBatch removes the files of a batch that will never be written.
func (r *restorer) dropBatch() {
	closeJobs(r.batch, true)
	r.batch, r.batchBytes = nil, 0
}

// closeJobs releases the descriptors of jobs, removing the files they
// created when remove is set. A part is abandoned: its file is removed once
// no other part is in progress.
func closeJobs(jobs []restoreJob, remove bool) {
	for _, j := range jobs {
		if j.part != nil {
			j.part.file.abandon(1)
			continue
		}
		if j.fd >= 0 {
			if remove {
				_ = unix.Unlinkat(j.dirfd, j.name, 0)
			}
			unix.Close(j.fd)
		}
		unix.Close(j.dirfd)
	}
}

// createAt makes a new, empty file, never through a symlink.
func createAt(dirfd int, name string) (int, error) {
	fd, err := unix.Openat(dirfd, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return -1, fmt.Errorf("create: %w", err)
	}
	return fd, nil
}

// need is one blob of one file: where it is stored and where it goes.
type need struct {
	blob repo.PackedBlob
	job  int   // index in the batch
	off  int64 // offset in the file
}

func (r *restorer) worker(ctx context.Context) error {
	var span, plain []byte
	for batch := range r.jobs {
		var err error
		if span, plain, err = r.writeBatch(ctx, batch, span, plain); err != nil {
			// Cancelled: the remaining batches only need their files removed.
			for b := range r.jobs {
				closeJobs(b, true)
			}
			return err
		}
		// A blob can be 8 MiB: buffers grown for one are not kept by every
		// worker for the rest of the restore.
		if cap(span) > spanMax {
			span = nil
		}
		if cap(plain) > spanMax {
			plain = nil
		}
	}
	return nil
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

// writeBatch writes the content of a batch's files, reading the packs in
// order, then finishes each file. Only a cancellation is returned; a file
// that fails is reported and removed.
func (r *restorer) writeBatch(ctx context.Context, batch []restoreJob, span, plain []byte) ([]byte, []byte, error) {
	failed := make([]error, len(batch))
	blobs := make([][]repo.PackedBlob, len(batch)) // of whole files
	var needs []need
	for i := range batch {
		job := &batch[i]
		if job.fd < 0 {
			if job.fd, failed[i] = createAt(job.dirfd, job.name); failed[i] != nil {
				continue
			}
		}
		content, off := []repo.PackedBlob(nil), int64(0)
		if p := job.part; p != nil {
			// sendParts looked the blobs up and reserved the space.
			content, off = p.file.blobs[p.first:p.first+p.n], p.off
		} else {
			if blobs[i], failed[i] = r.lookup(job.node); failed[i] != nil {
				continue
			}
			content = blobs[i]
			if r.prealloc && len(content) > 1 && !job.node.Sparse {
				failed[i] = preallocate(job.fd, int64(job.node.Size))
			}
		}
		for _, e := range content {
			needs = append(needs, need{blob: e, job: i, off: off})
			off += int64(e.RawLength)
		}
	}
	slices.SortFunc(needs, func(a, b need) int {
		if c := bytes.Compare(a.blob.Pack[:], b.blob.Pack[:]); c != 0 {
			return c
		}
		return cmp.Compare(a.blob.Offset, b.blob.Offset)
	})
	be, key := r.store.Repo().Backend(), r.store.Repo().Key()
	for i := 0; i < len(needs); {
		if err := ctx.Err(); err != nil {
			closeJobs(batch, true)
			return span, plain, err
		}
		// A stretch of one pack: blobs close together, up to spanMax.
		first := needs[i].blob
		start, end := int64(first.Offset), int64(first.Offset)+int64(first.Length)
		j := i + 1
		for ; j < len(needs); j++ {
			e := needs[j].blob
			eEnd := int64(e.Offset) + int64(e.Length)
			if e.Pack != first.Pack || int64(e.Offset) > end+spanGap || max(end, eEnd)-start > spanMax {
				break
			}
			end = max(end, eEnd)
		}
		h := repo.Handle{Type: repo.PackFile, Name: first.Pack.String()}
		span = room(span, int(end-start))
		var err error
		span, err = repo.ReadAt(ctx, be, h, start, int(end-start), span)
		if err != nil {
			err = fmt.Errorf("read pack %s: %w", first.Pack.Short(), err)
		}
		var last repo.ID
		var openErr error
		haveLast := false
		for _, nd := range needs[i:j] {
			if failed[nd.job] != nil {
				continue
			}
			if err != nil {
				failed[nd.job] = err
				continue
			}
			// Blobs are decrypted in place, so a blob is opened once: the
			// same blob again (dedup within the batch) comes right after it,
			// sorted, and shares its result.
			if !haveLast || nd.blob.ID != last {
				rel := int64(nd.blob.Offset) - start
				var p []byte
				plain = room(plain, int(nd.blob.RawLength))
				if p, openErr = pack.OpenBlobInPlace(key, nd.blob, span[rel:rel+int64(nd.blob.Length)], plain); openErr == nil {
					plain = p
				}
				last, haveLast = nd.blob.ID, true
			}
			if openErr != nil {
				failed[nd.job] = openErr
				continue
			}
			job := batch[nd.job]
			if werr := writeAt(job.fd, plain, nd.off, job.node.Sparse); werr != nil {
				failed[nd.job] = werr
				continue
			}
			r.bytes.Add(int64(len(plain)))
		}
		i = j
	}
	for i, job := range batch {
		if job.part == nil {
			r.finish(job, blobs[i], failed[i])
			continue
		}
		f := job.part.file
		if last, err := f.done(1, failed[i]); last {
			if errors.Is(err, errAbandoned) {
				closeJobs([]restoreJob{f.job}, true)
			} else {
				r.finish(f.job, f.blobs, err)
			}
		}
	}
	return span, plain, nil
}

// finish ends a file whose content was written, unless err says it failed:
// it finishes the file, counts it and closes it, or reports and removes it.
func (r *restorer) finish(job restoreJob, blobs []repo.PackedBlob, err error) {
	if err == nil {
		err = r.finishFile(job, blobs)
	}
	if err != nil {
		r.fail(job.path, err)
	} else {
		r.files.Add(1)
		r.count(func(s *RestoreStats) {
			s.Files++
			s.Bytes += int64(job.node.Size)
		})
	}
	// Never leave a file with wrong or partial content behind.
	closeJobs([]restoreJob{job}, err != nil)
}

// finishFile sets a written file's length and metadata, after verifying its
// content when asked.
func (r *restorer) finishFile(job restoreJob, blobs []repo.PackedBlob) error {
	// Only a hole at the end leaves a new file short of its size.
	if job.node.Sparse {
		if err := unix.Ftruncate(job.fd, int64(job.node.Size)); err != nil {
			return fmt.Errorf("truncate: %w", err)
		}
	}
	if r.opts.Verify {
		if err := r.verify(job, blobs); err != nil {
			return err
		}
	}
	// Through the descriptor, not the name: a chmod by name would follow a
	// symlink put there since the file was created.
	return applyMetaFd(job.fd, job.node)
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
func (r *restorer) verify(job restoreJob, blobs []repo.PackedBlob) error {
	fd, err := unix.Openat(job.dirfd, job.name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("verify: %w", err)
	}
	defer unix.Close(fd)
	key := r.store.Repo().Key()
	var off int64
	for _, e := range blobs {
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
