package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/cairn-backup/cairn/pack"
	"github.com/cairn-backup/cairn/snapshot"
	"github.com/cairn-backup/cairn/source"
)

// RunAsOf returns the newest of runs (oldest first, as LoadRuns gives them)
// of cluster (of any cluster when empty) that started at or before limit.
// A run's time is its start, the time status shows and "latest" orders by.
func RunAsOf(runs []*Run, cluster string, limit time.Time) (*Run, error) {
	for i := len(runs) - 1; i >= 0; i-- {
		run := runs[i]
		if (cluster == "" || run.Cluster == cluster) && !run.Started.After(limit) {
			return run, nil
		}
	}
	what := "no run"
	if cluster != "" {
		what += " of cluster " + cluster
	}
	return nil, fmt.Errorf("%w: %s started at or before %s", ErrNoRun, what, limit.Local().Format(time.DateTime))
}

// Part is a component of a run, as a restore sees it.
type Part struct {
	ComponentState
	// Dir is where a restore into a directory puts the part, relative to
	// the target: the component's name, or NAME/NODE when the run holds a
	// component of that name on several nodes. Empty when the names cannot
	// be directory names (a record written by something else).
	Dir string
}

// Parts returns the components of run whose names match any of globs
// (every one when globs is empty), in the run's order.
func Parts(run *Run, globs []string) ([]Part, error) {
	for _, g := range globs {
		if _, err := path.Match(g, ""); err != nil {
			return nil, fmt.Errorf("invalid --component pattern %q: %w", g, err)
		}
	}
	if len(run.Components) == 0 {
		return nil, fmt.Errorf("run %s has no components", run.ID)
	}
	// The layout depends on the whole run, not on what is selected, so that
	// a component lands in the same place however it is picked.
	nodes := map[string]int{}
	for _, c := range run.Components {
		nodes[c.Name]++
	}
	var parts []Part
	for _, c := range run.Components {
		if !matchAny(globs, c.Name) {
			continue
		}
		p := Part{ComponentState: c}
		if validName.MatchString(c.Name) {
			p.Dir = c.Name
			if nodes[c.Name] > 1 {
				p.Dir = ""
				if validName.MatchString(c.Node) {
					p.Dir = c.Name + "/" + c.Node
				}
			}
		}
		parts = append(parts, p)
	}
	if len(parts) == 0 {
		return nil, fmt.Errorf("no component of run %s matches %s", run.ID, strings.Join(globs, ", "))
	}
	return parts, nil
}

func matchAny(globs []string, name string) bool {
	if len(globs) == 0 {
		return true
	}
	return slices.ContainsFunc(globs, func(g string) bool {
		ok, _ := path.Match(g, name)
		return ok
	})
}

// Problem says why the part cannot be restored, or returns nil. A part
// with a snapshot can be, even one whose phase is failed (a post hook that
// failed after the snapshot was saved): whether its snapshot still exists
// is for the caller to find out.
func (p Part) Problem() error {
	switch {
	case p.Dir == "":
		return fmt.Errorf("component %q on node %q: the name cannot be a directory name", p.Name, p.Node)
	case p.SnapshotID != "":
		return nil
	case p.Phase == PhasePending || p.Phase == PhaseRunning:
		return fmt.Errorf("%s: the run has not finished it", p.Phase)
	case p.Phase == PhaseFailed:
		return fmt.Errorf("failed in the run: %s", p.Error)
	case p.Phase == PhaseMissing:
		return fmt.Errorf("missing from the run: %s", p.Error)
	}
	return fmt.Errorf("no snapshot (phase %s)", p.Phase)
}

// LivePart pairs a component of the cluster file with its part of a run.
type LivePart struct {
	Component *Component
	Part      Part  // the zero Part when Err says the run lacks it
	Err       error // why it cannot be restored, or nil
}

// LiveParts returns the components that a restore to live on node takes
// from run: those Select(node, globs) gives, as a backup on node would
// take them, each with its part of the run.
func (c *Config) LiveParts(run *Run, node string, globs []string) ([]LivePart, error) {
	if run.Cluster != c.Cluster {
		return nil, fmt.Errorf("run %s is of cluster %s, but %s describes cluster %s", run.ID, run.Cluster, filepath.Base(c.Path), c.Cluster)
	}
	comps, err := c.Select(node, globs)
	if err != nil {
		return nil, err
	}
	parts, err := Parts(run, nil)
	if err != nil {
		return nil, err
	}
	var out []LivePart
	for _, comp := range comps {
		var found []Part
		var nodes []string
		for _, p := range parts {
			if p.Name == comp.Name && (comp.Node == "" || p.Node == comp.Node) {
				found = append(found, p)
				nodes = append(nodes, p.Node)
			}
		}
		lp := LivePart{Component: comp}
		switch {
		case len(found) == 1:
			lp.Part = found[0]
		case len(found) == 0:
			lp.Err = fmt.Errorf("run %s has no component %s", run.ID, comp.Name)
		default:
			// A component without a node, taken on several nodes: this one's.
			if i := slices.IndexFunc(found, func(p Part) bool { return p.Node == node }); i >= 0 {
				lp.Part = found[i]
			} else {
				lp.Err = fmt.Errorf("run %s has component %s from nodes %s: restore on one of them, or give --node",
					run.ID, comp.Name, strings.Join(nodes, ", "))
			}
		}
		if lp.Err == nil {
			lp.Err = lp.Part.Problem()
		}
		if lp.Err == nil && lp.Part.Kind != "" && lp.Part.Kind != comp.Kind {
			lp.Err = fmt.Errorf("the run has it as kind %s, the cluster file as kind %s", lp.Part.Kind, comp.Kind)
		}
		out = append(out, lp)
	}
	return out, nil
}

// ComponentOf returns the component of the file whose snapshot sn is.
func (c *Config) ComponentOf(sn *snapshot.Snapshot) (*Component, error) {
	if sn.Component == "" {
		return nil, fmt.Errorf("snapshot %s is not of a cluster component", sn.ID.Short())
	}
	if sn.Cluster != c.Cluster {
		return nil, fmt.Errorf("snapshot %s is of cluster %q, but %s describes cluster %s", sn.ID.Short(), sn.Cluster, filepath.Base(c.Path), c.Cluster)
	}
	for i := range c.Components {
		comp := &c.Components[i]
		if comp.Name == sn.Component && (comp.Node == "" || comp.Node == sn.Hostname) {
			return comp, nil
		}
	}
	return nil, fmt.Errorf("snapshot %s is of component %s on node %s, which %s does not describe",
		sn.ID.Short(), sn.Component, sn.Hostname, filepath.Base(c.Path))
}

// Overrides replace the cluster file's restore settings for a restore to
// live (--target-dsn and the like).
type Overrides struct {
	DSN, Bucket, DataDir, Address string
}

// overrideKinds says which kinds each override is for.
var overrideKinds = []struct {
	flag  string
	value func(Overrides) string
	kinds []string
}{
	{"--target-dsn", func(o Overrides) string { return o.DSN }, []string{"postgres", "mysql"}},
	{"--target-bucket", func(o Overrides) string { return o.Bucket }, []string{"s3"}},
	{"--target-data-dir", func(o Overrides) string { return o.DataDir }, []string{"etcd", "redis"}},
	{"--target-address", func(o Overrides) string { return o.Address }, []string{"redis"}},
}

// Check makes sure each override given applies to exactly one of comps:
// one database or directory cannot be the target of two components.
func (o Overrides) Check(comps []*Component) error {
	for _, ok := range overrideKinds {
		if ok.value(o) == "" {
			continue
		}
		var names []string
		for _, c := range comps {
			if slices.Contains(ok.kinds, c.Kind) {
				names = append(names, c.Name)
			}
		}
		switch {
		case len(names) == 0:
			return fmt.Errorf("%s is for components of kind %s, and none is selected", ok.flag, strings.Join(ok.kinds, " or "))
		case len(names) > 1:
			return fmt.Errorf("%s would be the target of %d components (%s): select one with --component", ok.flag, len(names), strings.Join(names, ", "))
		}
	}
	return nil
}

func firstSet(vals ...string) string {
	for _, v := range vals {
		if v != "" {
			return v
		}
	}
	return ""
}

// LiveTarget returns where a restore to live puts a stream component: its
// restore settings with o over them. A database goes back to the
// component's own DSN and a Redis server is looked for at its own address
// unless the settings say otherwise; the target must then still be new or
// empty, unless overwrite.
func (comp *Component) LiveTarget(o Overrides, overwrite bool) (source.Target, error) {
	r := comp.Restore
	t := source.Target{
		Overwrite: overwrite,
		Name:      r.Name, InitialCluster: r.InitialCluster,
		InitialAdvertisePeerURLs: r.InitialAdvertisePeerURLs, ClusterToken: r.InitialClusterToken,
	}
	switch comp.Kind {
	case "postgres", "mysql":
		t.DSN = firstSet(o.DSN, r.DSN, comp.DSN)
	case "etcd", "redis":
		t.DataDir = firstSet(o.DataDir, r.DataDir)
		if t.DataDir == "" {
			return t, errors.New("no data directory to restore into: set restore.data_dir in the cluster file or give --target-data-dir")
		}
		if comp.Kind == "redis" {
			t.Address = firstSet(o.Address, r.Address, comp.Address)
		}
	case "command":
		if len(comp.Restore.Command) == 0 {
			return t, errors.New("no restore command: set restore in the cluster file, such as restore: [\"grid-import\"]")
		}
	}
	return t, nil
}

// LiveOptions describe a restore to live.
type LiveOptions struct {
	Overrides Overrides
	// Overwrite is the --overwrite policy given, or "" when none was: then
	// every target must be new or empty. A database, data directory,
	// dump.rdb or bucket is written into only with OverwriteAlways; the
	// files of a files component follow the policy as a restore into a
	// directory does.
	Overwrite string
	// Delete, Verify and Exclude apply to files components.
	Delete   bool
	Verify   bool
	Exclude  []string
	Reporter snapshot.Reporter
}

// ErrNotEmpty means a target is neither new nor empty and no --overwrite
// policy allows writing into it.
var ErrNotEmpty = errors.New("not new or empty; give --overwrite always to restore over it")

// RestoreLive puts snapshot sn of comp back into the live system: a files
// component to its own paths, an s3 component into a bucket
// (restoreObjectsLive), a stream component through source.RestoreLive
// into the target LiveTarget gives.
func RestoreLive(ctx context.Context, store *pack.Store, comp *Component, sn *snapshot.Snapshot, opts LiveOptions) (snapshot.RestoreStats, error) {
	switch comp.Kind {
	case "files":
		return restoreFilesLive(ctx, store, sn, opts)
	case "s3":
		return restoreObjectsLive(ctx, store, comp, sn, opts)
	}
	return restoreStreamLive(ctx, store, comp, sn, opts)
}

// errStopped ends the feeding of a stream once its restore has returned.
var errStopped = errors.New("the restore stopped reading")

func restoreStreamLive(ctx context.Context, store *pack.Store, comp *Component, sn *snapshot.Snapshot, opts LiveOptions) (snapshot.RestoreStats, error) {
	var st snapshot.RestoreStats
	target, err := comp.LiveTarget(opts.Overrides, opts.Overwrite == snapshot.OverwriteAlways)
	if err != nil {
		return st, err
	}
	spec, err := comp.Spec()
	if err != nil {
		return st, err
	}
	node, err := streamNode(ctx, store, sn)
	if err != nil {
		return st, err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	pr, pw := io.Pipe()
	written := make(chan error, 1)
	go func() {
		err := snapshot.WriteContent(ctx, store, node, pw)
		if err != nil {
			// Stop the restoring program before it sees the end of its
			// input: it must not take a truncated stream for a whole one.
			cancel()
		}
		pw.CloseWithError(err)
		written <- err
	}()
	err = source.RestoreLive(ctx, spec, target, pr)
	pr.CloseWithError(errStopped)
	werr := <-written
	if werr != nil && !errors.Is(werr, errStopped) {
		return st, fmt.Errorf("read snapshot %s: %w", sn.ID.Short(), werr)
	}
	if err != nil {
		return st, err
	}
	st.Files, st.Bytes = 1, int64(node.Size)
	return st, nil
}

// restoreObjectsLive puts the objects of an s3 component's snapshot into
// the target bucket: --target-bucket, else restore.bucket, else the
// component's own bucket, on restore.endpoint or the component's endpoint,
// with the component's credentials. A restore.prefix moves the objects
// from the component's prefix to that one. Unless --overwrite always, the
// bucket must hold nothing under the target prefix.
func restoreObjectsLive(ctx context.Context, store *pack.Store, comp *Component, sn *snapshot.Snapshot, opts LiveOptions) (snapshot.RestoreStats, error) {
	var st snapshot.RestoreStats
	start := time.Now()
	spec, err := comp.Spec()
	if err != nil {
		return st, err
	}
	r := comp.Restore
	spec.Endpoint = firstSet(r.Endpoint, comp.Endpoint)
	spec.Bucket = firstSet(opts.Overrides.Bucket, r.Bucket, comp.Bucket)
	spec.Prefix = firstSet(r.Prefix, comp.Prefix)
	walk := func(put func(snapshot.Object, io.Reader) error) error {
		return snapshot.WalkObjects(ctx, store, sn.Tree, func(o snapshot.Object, rd io.Reader) error {
			if r.Prefix != "" {
				o.Key = r.Prefix + strings.TrimPrefix(o.Key, comp.Prefix)
			}
			if err := put(o, rd); err != nil {
				return err
			}
			st.Files++
			st.Bytes += o.Size
			if opts.Reporter != nil {
				opts.Reporter.Progress(snapshot.Progress{Files: st.Files, Bytes: st.Bytes, Elapsed: time.Since(start)})
			}
			return nil
		})
	}
	err = source.PutObjects(ctx, spec, opts.Overwrite == snapshot.OverwriteAlways, walk)
	return st, err
}

// streamNode returns the one file of a stream component's snapshot.
func streamNode(ctx context.Context, store *pack.Store, sn *snapshot.Snapshot) (*snapshot.Node, error) {
	t, err := snapshot.LoadTree(ctx, store, sn.Tree)
	if err != nil {
		return nil, err
	}
	if len(t.Nodes) != 1 || t.Nodes[0].Type != snapshot.TypeFile {
		return nil, fmt.Errorf("snapshot %s is not a stream of one file: it holds %d entries", sn.ID.Short(), len(t.Nodes))
	}
	return t.Nodes[0], nil
}

// restoreFilesLive restores a files snapshot to the paths it was taken
// from. Each path is restored on its own, from its parent directory with an
// include pattern naming only it, so nothing beside the paths is written,
// and --delete removes only what is below them.
func restoreFilesLive(ctx context.Context, store *pack.Store, sn *snapshot.Snapshot, opts LiveOptions) (snapshot.RestoreStats, error) {
	var total snapshot.RestoreStats
	paths := topPaths(sn.Paths)
	if len(paths) == 0 {
		return total, fmt.Errorf("snapshot %s names no paths", sn.ID.Short())
	}
	overwrite := opts.Overwrite
	if overwrite == "" {
		// Every path is checked before anything is written.
		for _, p := range paths {
			if err := newOrEmpty(p); err != nil {
				return total, err
			}
		}
		overwrite = snapshot.OverwriteNever // nothing is there to overwrite
	}
	var incomplete error
	for _, p := range paths {
		sub, include, target, err := livePath(ctx, store, sn, p)
		if err != nil {
			return total, err
		}
		st, err := snapshot.Restore(ctx, store, sub, snapshot.RestoreOptions{
			Target: target, Include: include, Exclude: opts.Exclude,
			Verify: opts.Verify, Overwrite: overwrite, Delete: opts.Delete, Reporter: opts.Reporter,
		})
		total.Files += st.Files
		total.Dirs += st.Dirs
		total.Others += st.Others
		total.Bytes += st.Bytes
		total.Skipped += st.Skipped
		total.Deleted += st.Deleted
		total.Verified += st.Verified
		total.Errors += st.Errors
		switch {
		case errors.Is(err, snapshot.ErrRestoreIncomplete):
			incomplete = err
		case err != nil:
			return total, fmt.Errorf("restore %s: %w", p, err)
		}
	}
	return total, incomplete
}

// livePath returns what restores path p of sn in place: the tree of p's
// parent directory as a snapshot, the include pattern that selects p
// alone, and the parent directory as the target.
func livePath(ctx context.Context, store *pack.Store, sn *snapshot.Snapshot, p string) (*snapshot.Snapshot, []string, string, error) {
	if p == "/" {
		return sn, nil, "/", nil
	}
	parent := path.Dir(p)
	n, err := snapshot.FindNode(ctx, store, sn, parent)
	if err != nil {
		return nil, nil, "", err
	}
	if n.Type != snapshot.TypeDir || n.Subtree == nil {
		return nil, nil, "", fmt.Errorf("snapshot %s: %s is not a directory", sn.ID.Short(), parent)
	}
	sub := *sn
	sub.Tree = *n.Subtree
	return &sub, []string{"/" + escapePattern(path.Base(p))}, parent, nil
}

// escapePattern makes a file name a pattern that matches only itself.
func escapePattern(name string) string {
	var b strings.Builder
	for _, r := range name {
		if strings.ContainsRune(`*?[]\`, r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}

// topPaths returns paths cleaned and sorted, without those inside another
// one, which the other's restore covers.
func topPaths(paths []string) []string {
	var out []string
	for _, p := range normPaths(paths) {
		if !path.IsAbs(p) {
			continue // backups record absolute paths; anything else is not a place to write
		}
		if slices.ContainsFunc(out, func(q string) bool { return q == "/" || strings.HasPrefix(p, q+"/") }) {
			continue
		}
		out = append(out, p)
	}
	return out
}

// newOrEmpty returns an error unless p does not exist or is an empty directory.
func newOrEmpty(p string) error {
	fi, err := os.Lstat(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s: %w", p, ErrNotEmpty)
	}
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	names, err := f.Readdirnames(1)
	if err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("read %s: %w", p, err)
	}
	if len(names) > 0 {
		return fmt.Errorf("%s: %w", p, ErrNotEmpty)
	}
	return nil
}
