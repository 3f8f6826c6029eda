package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cairn-backup/cairn/pack"
	"github.com/cairn-backup/cairn/repo"
	"github.com/cairn-backup/cairn/snapshot"
	"github.com/cairn-backup/cairn/source"
)

// BackupOptions describe one process's part of a cluster run.
type BackupOptions struct {
	Config     *Config
	Components []*Component // what this process backs up (Config.Select)
	Node       string       // this node; the hostname of its snapshots
	Run        string       // the run to join or create; empty: a new run
	Tags       []string
	Time       time.Time // the snapshots' time; zero: when each is taken
	Force      bool      // read every file, even the unchanged ones

	// Log receives the run log: hook output, each line prefixed with the
	// hook, and a line per component.
	Log io.Writer
	// Reporter, when set, returns the progress reporter of a component.
	// Its Done method, if it has one, is called when the snapshot is taken.
	Reporter func(*Component) snapshot.Reporter
	// Now is the clock of run records (default time.Now).
	Now func() time.Time
	// Unreadable, when set, hears of snapshots and run records that cannot
	// be read (the error names the file), which are then left out instead
	// of stopping the run.
	Unreadable func(repo.ID, error)
}

// ComponentResult is what became of one component in this process.
type ComponentResult struct {
	Component *Component
	Snapshot  *snapshot.Snapshot // nil: none saved
	Err       error              // nil: completed
	// Partial says the snapshot was saved but some files could not be read.
	Partial bool
}

// Result is a process's part of a run.
type Result struct {
	RunID      string
	Run        *Run // the run's state when this process finished; nil if it could not be read
	Components []ComponentResult
}

// Failed reports whether a component of this process failed.
func (res *Result) Failed() bool {
	return slices.ContainsFunc(res.Components, func(c ComponentResult) bool { return c.Err != nil })
}

// Partial reports whether a component's snapshot left out unreadable files.
func (res *Result) Partial() bool {
	return slices.ContainsFunc(res.Components, func(c ComponentResult) bool { return c.Partial })
}

// Backup runs this process's components of a cluster run: the run's pre
// hooks, then each component in turn (its pre hooks, its snapshot, its post
// hooks) and the run's post hooks, which run whatever happened before,
// interruption included. A component that fails does not stop the others;
// its error is in the result. The error returned is about the run itself:
// it could not start, a run hook failed, or ctx was cancelled.
func Backup(ctx context.Context, store *pack.Store, opts BackupOptions) (*Result, error) {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Log == nil {
		opts.Log = io.Discard
	}
	cfg := opts.Config
	r := store.Repo()
	res := &Result{RunID: opts.Run}
	if res.RunID == "" {
		res.RunID = NewRunID()
	}
	b := &backup{opts: opts, store: store, runID: res.RunID}

	var err error
	if slices.ContainsFunc(opts.Components, func(c *Component) bool { return c.Kind == "files" || c.Kind == "s3" }) {
		// Parents for incremental backups, read once for all components.
		if b.snapshots, err = snapshot.List(ctx, r, opts.Unreadable); err != nil {
			return nil, err
		}
	}
	if err := Join(ctx, r, res.RunID, cfg, opts.Now()); err != nil {
		return nil, err
	}
	b.logf("run %s of cluster %s on node %s: %d components\n", res.RunID, cfg.Cluster, opts.Node, len(opts.Components))

	runHooks := hookSet{scope: "run", hooks: cfg.Hooks, env: b.env(nil), log: opts.Log}
	preErr := runHooks.run(ctx, "pre")
	for _, comp := range opts.Components {
		if ctx.Err() != nil {
			break // the rest stay pending; the run's post hooks still run
		}
		var cr ComponentResult
		if preErr != nil {
			cr = b.skip(ctx, comp, fmt.Errorf("not run: %w", preErr))
		} else {
			cr = b.component(ctx, comp)
		}
		res.Components = append(res.Components, cr)
	}
	// Whatever happened, the cluster must be resumed: not even an
	// interruption cancels the post hooks (each still has its timeout).
	result := PhaseCompleted
	if preErr != nil || res.Failed() || ctx.Err() != nil {
		result = PhaseFailed
	}
	postErr := runHooks.run(context.WithoutCancel(ctx), "post", "CAIRN_RESULT="+result)

	if run, err := FindRun(context.WithoutCancel(ctx), r, res.RunID, "", opts.Now(), opts.Unreadable); err == nil {
		res.Run = run
	}
	if err := context.Cause(ctx); err != nil {
		return res, err
	}
	return res, errors.Join(preErr, postErr)
}

type backup struct {
	opts      BackupOptions
	store     *pack.Store
	runID     string
	snapshots []*snapshot.Snapshot
}

func (b *backup) logf(format string, args ...any) {
	_, _ = fmt.Fprintf(b.opts.Log, format, args...)
}

// env is what hooks learn about the run from their environment.
func (b *backup) env(comp *Component) []string {
	env := []string{"CAIRN_CLUSTER=" + b.opts.Config.Cluster, "CAIRN_RUN=" + b.runID, "CAIRN_NODE=" + b.opts.Node}
	if comp != nil {
		env = append(env, "CAIRN_COMPONENT="+comp.Name, "CAIRN_KIND="+comp.Kind)
	}
	return env
}

// report records an event of comp; an interrupted process still records
// how its component ended.
func (b *backup) report(ctx context.Context, comp *Component, ev Event) error {
	ev.Component, ev.Node, ev.Kind = comp.Name, b.opts.Node, comp.Kind
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	return Report(ctx, b.store.Repo(), b.runID, b.opts.Config.Cluster, ev, b.opts.Now())
}

// skip records comp as failed without running it.
func (b *backup) skip(ctx context.Context, comp *Component, err error) ComponentResult {
	if rerr := b.report(ctx, comp, Event{Phase: PhaseFailed, Error: err.Error()}); rerr != nil {
		err = errors.Join(err, rerr)
	}
	b.logf("component %s (%s): failed: %v\n", comp.Name, comp.Kind, err)
	return ComponentResult{Component: comp, Err: err}
}

// component backs up one component between its hooks and records how it went.
func (b *backup) component(ctx context.Context, comp *Component) ComponentResult {
	start := time.Now()
	cr := ComponentResult{Component: comp}
	if err := b.report(ctx, comp, Event{Phase: PhaseRunning}); err != nil {
		cr.Err = err
		b.logf("component %s (%s): failed: %v\n", comp.Name, comp.Kind, err)
		return cr
	}
	hooks := hookSet{scope: comp.Name, hooks: comp.Hooks, env: b.env(comp), log: b.opts.Log}
	if err := hooks.run(ctx, "pre"); err != nil {
		cr.Err = err
	} else {
		cr.Snapshot, cr.Partial, cr.Err = b.snapshot(ctx, comp)
	}
	result := PhaseCompleted
	if cr.Err != nil {
		result = PhaseFailed
	}
	// Post hooks always run: they undo what the pre hooks did.
	if err := hooks.run(context.WithoutCancel(ctx), "post", "CAIRN_RESULT="+result); err != nil {
		cr.Err = errors.Join(cr.Err, err)
	}

	ev := Event{Phase: PhaseCompleted, Duration: time.Since(start).Seconds()}
	if cr.Snapshot != nil {
		ev.SnapshotID = cr.Snapshot.ID.String()
		if s := cr.Snapshot.Summary; s != nil {
			ev.Bytes = s.TotalBytesProcessed
		}
	}
	if cr.Err != nil {
		ev.Phase, ev.Error = PhaseFailed, oneLine(cr.Err)
	} else if cr.Partial {
		ev.Error = fmt.Sprintf("%d entries could not be read", cr.Snapshot.Summary.Errors)
	}
	if err := b.report(ctx, comp, ev); err != nil {
		cr.Err = errors.Join(cr.Err, err)
		ev.Phase = PhaseFailed
	}
	switch {
	case ev.Phase == PhaseFailed:
		b.logf("component %s (%s): failed: %s\n", comp.Name, comp.Kind, oneLine(cr.Err))
	case cr.Snapshot != nil:
		b.logf("component %s (%s): snapshot %s saved\n", comp.Name, comp.Kind, cr.Snapshot.ID.Short())
	}
	return cr
}

// snapshot takes the component's snapshot.
func (b *backup) snapshot(ctx context.Context, comp *Component) (*snapshot.Snapshot, bool, error) {
	opts := snapshot.BackupOptions{
		Hostname: b.opts.Node, Tags: b.opts.Tags, Time: b.opts.Time, Force: b.opts.Force,
		Cluster: b.opts.Config.Cluster, Component: comp.Name, Run: b.runID,
	}
	var rep snapshot.Reporter
	if b.opts.Reporter != nil {
		rep = b.opts.Reporter(comp)
		if d, ok := rep.(interface{ Done() }); ok {
			defer d.Done() // clears a progress line before the component's log line
		}
	}
	errs := &errorReporter{next: rep}
	opts.Reporter = errs

	if comp.Kind == "files" {
		opts.Paths, opts.Excludes, opts.OneFileSystem = comp.Paths, comp.Exclude, comp.OneFileSystem
		opts.Parent = b.parent(comp, comp.Paths)
		sn, err := snapshot.Backup(ctx, b.store, opts)
		switch {
		case sn == nil && errors.Is(err, snapshot.ErrNoPaths):
			return nil, false, fmt.Errorf("%w (%s)", err, errs.first())
		case sn == nil:
			return nil, false, err
		case errors.Is(err, snapshot.ErrPartial):
			return sn, true, nil
		}
		return sn, false, err
	}

	spec, err := comp.Spec()
	if err != nil {
		return nil, false, err
	}
	if comp.Kind == "s3" {
		// Each object a file; those unchanged since the parent are not
		// downloaded again.
		bucket, err := source.OpenBucket(spec)
		if err != nil {
			return nil, false, err
		}
		opts.Parent = b.parent(comp, []string{"/"})
		sn, err := snapshot.BackupObjects(ctx, b.store, opts, bucket)
		switch {
		case sn == nil:
			return nil, false, err
		case errors.Is(err, snapshot.ErrPartial):
			return sn, true, nil
		}
		return sn, false, err
	}
	name, rc, err := source.Open(ctx, spec)
	if err != nil {
		return nil, false, err
	}
	stream := &streamReader{rc: rc}
	defer stream.close()
	opts.Stdin, opts.StdinName = stream, name
	// The one entry's read error is the stream's failure, reported below.
	errs.next = progressOnly{rep}
	sn, err := snapshot.Backup(ctx, b.store, opts)
	eof := stream.eof
	serr := stream.close()
	switch {
	case sn != nil:
		return sn, false, err
	case serr != nil && (eof || errors.Is(err, snapshot.ErrNoPaths)):
		// The producer's failure, not the empty read it caused. Nothing
		// was saved: the read failed before the end of the stream.
		return nil, false, serr
	case err != nil:
		return nil, false, err
	}
	return nil, false, serr
}

// parent is the latest snapshot of the same cluster, component, node and
// paths, as for a path backup. A snapshot of objects has the path "/".
func (b *backup) parent(comp *Component, paths []string) *snapshot.Snapshot {
	want := normPaths(paths)
	for i := len(b.snapshots) - 1; i >= 0; i-- {
		sn := b.snapshots[i]
		if sn.Hostname == b.opts.Node && sn.Cluster == b.opts.Config.Cluster && sn.Component == comp.Name &&
			slices.Equal(normPaths(sn.Paths), want) {
			return sn
		}
	}
	return nil
}

func normPaths(paths []string) []string {
	out := make([]string, 0, len(paths))
	for _, p := range paths {
		out = append(out, filepath.Clean(p))
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// streamReader ends a source's stream with the producer's error instead of
// io.EOF, so that a failed dump fails the read, and the backup stops before
// it saves a snapshot of a truncated stream.
type streamReader struct {
	rc     io.ReadCloser
	eof    bool
	closed bool
	err    error // the producer's failure, or the first read error
}

func (s *streamReader) Read(p []byte) (int, error) {
	if s.eof || s.closed {
		return 0, s.end()
	}
	n, err := s.rc.Read(p)
	switch {
	case err == io.EOF:
		s.eof = true
		return n, s.end()
	case err != nil && s.err == nil:
		s.err = err
	}
	return n, err
}

// end closes the stream after its last byte: the producer's result.
func (s *streamReader) end() error {
	if err := s.close(); err != nil {
		return err
	}
	return io.EOF
}

// close stops the producer, if it is still going, and returns its failure.
func (s *streamReader) close() error {
	if !s.closed {
		s.closed = true
		if err := s.rc.Close(); err != nil {
			s.err = err
		}
	}
	return s.err
}

// errorReporter passes progress and errors on, and keeps the first error
// to explain a component that saved nothing.
type errorReporter struct {
	next snapshot.Reporter

	mu  sync.Mutex
	err error
}

func (e *errorReporter) Progress(p snapshot.Progress) {
	if e.next != nil {
		e.next.Progress(p)
	}
}

func (e *errorReporter) Error(path string, err error) {
	e.mu.Lock()
	if e.err == nil {
		e.err = err
	}
	e.mu.Unlock()
	if e.next != nil {
		e.next.Error(path, err)
	}
}

func (e *errorReporter) first() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.err == nil {
		return "no error reported"
	}
	return oneLine(e.err)
}

// progressOnly passes progress on and drops errors.
type progressOnly struct{ next snapshot.Reporter }

func (p progressOnly) Progress(pr snapshot.Progress) {
	if p.next != nil {
		p.next.Progress(pr)
	}
}

func (progressOnly) Error(string, error) {}

// oneLine folds a multi-line error (errors.Join) into one line.
func oneLine(err error) string {
	if err == nil {
		return ""
	}
	lines := strings.FieldsFunc(err.Error(), func(r rune) bool { return r == '\n' || r == '\r' })
	return strings.Join(lines, "; ")
}
