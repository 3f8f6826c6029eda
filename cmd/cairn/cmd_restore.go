package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/cairn-backup/cairn/cluster"
	"github.com/cairn-backup/cairn/pack"
	"github.com/cairn-backup/cairn/repo"
	"github.com/cairn-backup/cairn/snapshot"
	"github.com/urfave/cli/v2"
)

// latestRun names the newest run, as "latest" names the newest snapshot.
const latestRun = "latest-run"

func newRestoreCommand() *cli.Command {
	// The filters of "snapshots", with --component repeatable: a run
	// restore takes several globs.
	var filters []cli.Flag
	for _, f := range filterFlags() {
		if f.Names()[0] != "component" {
			filters = append(filters, f)
		}
	}
	filters = append(filters, &cli.StringSliceFlag{Name: "component",
		Usage: "only components matching `GLOB` (repeatable with a run)"})
	return &cli.Command{
		Name:      "restore",
		Usage:     "restore a snapshot, or every component of a cluster run, into a directory or the live system",
		ArgsUsage: "ID|latest|RUN_ID|latest-run",
		Description: "ID is a snapshot id (or a unique prefix of one, at least 4 hex digits) and\n" +
			"\"latest\" the newest snapshot that passes the filters. RUN_ID is a run id or a\n" +
			"unique prefix of one; \"latest-run\" is the newest run (of --cluster, if given).\n" +
			"An argument with anything but hex digits (a UUID has dashes) names a run; hex\n" +
			"digits alone name whichever of a snapshot or a run has an id starting with them\n" +
			"(both is an error: give more of the id).\n\n" +
			"A run restores each component's snapshot into DIR/COMPONENT/, or into\n" +
			"DIR/COMPONENT/NODE/ for a component the run holds from several nodes. Components\n" +
			"that failed or are missing are reported and the exit code is 1; the others are\n" +
			"restored all the same. --as-of TIME with \"latest-run\" (or with no ID and a\n" +
			"--config FILE) picks the newest run started at or before TIME.\n\n" +
			"--to-live --config FILE restores into the live system instead: files components\n" +
			"to their own paths, the others through their restore settings in FILE (which\n" +
			"--target-dsn, --target-bucket, --target-data-dir and --target-address replace).\n" +
			"The components are those of this node (--node), as for a backup. Targets must\n" +
			"be new or empty: --overwrite always replaces a database, data directory or\n" +
			"files; for files, if-changed and never work as in a restore into a directory.",
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "target", Aliases: []string{"t"}, Usage: "restore into `DIR` (required, unless --to-live)"},
			&cli.StringSliceFlag{Name: "include", Aliases: []string{"i"}, Usage: "restore only entries matching `GLOB` (repeatable)"},
			&cli.StringSliceFlag{Name: "exclude", Aliases: []string{"e"}, Usage: "do not restore entries matching `GLOB` (repeatable)"},
			&cli.BoolFlag{Name: "verify", Usage: "read what was written back and compare"},
			&cli.StringFlag{Name: "overwrite", Value: snapshot.OverwriteAlways, Usage: "`POLICY` for existing files: always, if-changed or never"},
			&cli.BoolFlag{Name: "delete", Usage: "remove files in the target that are not in the snapshot"},
			&cli.StringFlag{Name: "as-of", Usage: "restore the newest snapshot (or with latest-run, run) at or before `TIME` (\"YYYY-MM-DD HH:MM:SS\" or RFC 3339)"},
			&cli.BoolFlag{Name: "to-live", Usage: "restore into the live system the cluster file (--config) describes"},
			&cli.StringFlag{Name: "config", Usage: "the cluster file `FILE`: each component's kind and restore settings (and the repository)"},
			&cli.StringFlag{Name: "node", Usage: "with --to-live: this node's `NAME`, which selects its components (default: the hostname)"},
			&cli.StringFlag{Name: "target-dsn", Usage: "with --to-live: restore the postgres or mysql component into `DSN`"},
			&cli.StringFlag{Name: "target-bucket", Usage: "with --to-live: restore the s3 component into `BUCKET`"},
			&cli.StringFlag{Name: "target-data-dir", Usage: "with --to-live: restore the etcd or redis component into `DIR`"},
			&cli.StringFlag{Name: "target-address", Usage: "with --to-live: the redis component's server `HOST:PORT`, which must not be running"},
		}, filters...),
		Action: runRestore,
	}
}

type restoreSummary struct {
	MessageType     string  `json:"message_type"`
	SnapshotID      string  `json:"snapshot_id"`
	Target          string  `json:"target"`
	FilesRestored   int     `json:"files_restored"`
	DirsRestored    int     `json:"dirs_restored"`
	OthersRestored  int     `json:"others_restored"`
	BytesRestored   int64   `json:"bytes_restored"`
	FilesSkipped    int     `json:"files_skipped"`
	FilesDeleted    int     `json:"files_deleted"`
	FilesVerified   int     `json:"files_verified"`
	Errors          int     `json:"errors"`
	DurationSeconds float64 `json:"duration_seconds"`
}

// restoreJob is what a restore command was asked for.
type restoreJob struct {
	c       *cli.Context
	out     *output
	store   *pack.Store
	target  string // "" with --to-live
	toLive  bool
	cfg     *cluster.Config
	globs   []string
	opts    snapshot.RestoreOptions // Target set per snapshot
	live    cluster.LiveOptions
	started time.Time
}

func runRestore(c *cli.Context) error {
	if err := needArgs(c, 0, 1); err != nil {
		return err
	}
	// A restore holds less than a backup (a 2 MiB span and a blob per
	// worker, the trees being walked): a lower limit keeps its garbage from
	// setting the resident size.
	setMemoryLimit(64 << 20)
	ref := c.Args().First()
	var asOf time.Time
	if s := c.String("as-of"); s != "" {
		t, err := parseTime(s)
		if err != nil {
			return fmt.Errorf("--as-of: %w", err)
		}
		asOf = asOfLimit(t)
		switch ref {
		case "":
			// With a cluster file, a point in time means the cluster's
			// state then: its newest run.
			ref = "latest"
			if c.String("config") != "" {
				ref = latestRun
			}
		case "latest", latestRun:
		default:
			return usageError(c, "--as-of chooses what to restore: give no ID, \"latest\" (a snapshot) or \"latest-run\" (a run)")
		}
	} else if ref == "" {
		return usageError(c, "missing argument ID|latest|RUN_ID|latest-run")
	}
	job := &restoreJob{c: c, out: newOutput(c), target: c.String("target"), toLive: c.Bool("to-live"),
		globs: c.StringSlice("component"), started: time.Now()}
	overrides := cluster.Overrides{DSN: c.String("target-dsn"), Bucket: c.String("target-bucket"),
		DataDir: c.String("target-data-dir"), Address: c.String("target-address")}
	if job.toLive {
		switch {
		case job.target != "":
			return usageError(c, "--to-live restores into the targets the cluster file names; --target DIR is for a restore into a directory")
		case c.String("config") == "":
			return usageError(c, "--to-live needs --config FILE: the cluster file says what each component is and where it goes back")
		case len(c.StringSlice("include")) > 0:
			return usageError(c, "--include does not go with --to-live: components are restored whole (select them with --component)")
		}
	} else {
		if job.target == "" {
			return usageError(c, "--target is required (or --to-live, with --config)")
		}
		for _, name := range []string{"node", "target-dsn", "target-bucket", "target-data-dir", "target-address"} {
			if c.IsSet(name) {
				return usageError(c, "--%s goes with --to-live", name)
			}
		}
	}
	f, err := restoreFilter(c, job.globs)
	if err != nil {
		return err
	}
	if name := c.String("config"); name != "" {
		if job.cfg, err = cluster.Load(name); err != nil {
			return err
		}
		if f.Cluster != "" && f.Cluster != job.cfg.Cluster {
			return usageError(c, "--cluster %s, but %s describes cluster %s", f.Cluster, filepath.Base(name), job.cfg.Cluster)
		}
		f.Cluster = job.cfg.Cluster
		if err := useClusterRepository(c, job.cfg); err != nil {
			return err
		}
	}
	job.opts = snapshot.RestoreOptions{
		Include: c.StringSlice("include"), Exclude: c.StringSlice("exclude"),
		Verify: c.Bool("verify"), Overwrite: c.String("overwrite"), Delete: c.Bool("delete"),
		// Each worker waits for its own reads: more of them hide a remote
		// repository's latency, when asked for.
		Workers: c.Int("connections"),
	}
	// A live target must be new or empty unless an overwrite policy is
	// given: the default "always" is for directories.
	job.live = cluster.LiveOptions{Overrides: overrides, Delete: c.Bool("delete"), Verify: c.Bool("verify"),
		Exclude: c.StringSlice("exclude")}
	if c.IsSet("overwrite") {
		job.live.Overwrite = c.String("overwrite")
		switch job.live.Overwrite {
		case snapshot.OverwriteAlways, snapshot.OverwriteIfChanged, snapshot.OverwriteNever:
		default:
			return usageError(c, "invalid --overwrite %q: want always, if-changed or never", job.live.Overwrite)
		}
	}

	return withStore(c, true, func(ctx context.Context, r *repo.Repo, store *pack.Store) error {
		job.store = store
		run, sn, err := resolveRestore(ctx, r, ref, asOf, f)
		if err != nil {
			return err
		}
		if run != nil {
			for _, name := range []string{"host", "tag", "path", "run"} {
				if c.IsSet(name) {
					return usageError(c, "--%s selects a snapshot; it does not apply to run %s", name, run.ID)
				}
			}
			if f.Cluster != "" && run.Cluster != f.Cluster {
				return fmt.Errorf("run %s is of cluster %s, not %s", run.ID, run.Cluster, f.Cluster)
			}
			if job.toLive {
				return job.runToLive(ctx, r, run)
			}
			return job.runToDir(ctx, r, run)
		}
		if len(job.globs) > 1 {
			return usageError(c, "several --component patterns select components of a run; snapshot %s is one component", sn.ID.Short())
		}
		if job.toLive {
			return job.snapshotToLive(ctx, sn)
		}
		return job.snapshotToDir(ctx, sn)
	})
}

// restoreFilter reads the snapshot filters; one --component glob is a
// filter too.
func restoreFilter(c *cli.Context, globs []string) (snapshot.Filter, error) {
	f := snapshot.Filter{
		Hosts: c.StringSlice("host"), Tags: c.StringSlice("tag"),
		Cluster: c.String("cluster"), Run: c.String("run"),
	}
	for _, g := range globs {
		if _, err := filepath.Match(g, ""); err != nil {
			return f, fmt.Errorf("invalid --component pattern %q: %w", g, err)
		}
	}
	if len(globs) == 1 {
		f.Component = globs[0]
	}
	for _, p := range c.StringSlice("path") {
		abs, err := filepath.Abs(p) // backups record absolute, cleaned paths
		if err != nil {
			return f, fmt.Errorf("--path %s: %w", p, err)
		}
		f.Paths = append(f.Paths, abs)
	}
	return f, nil
}

// resolveRestore finds what ref names: a run or a snapshot.
func resolveRestore(ctx context.Context, r *repo.Repo, ref string, asOf time.Time, f snapshot.Filter) (*cluster.Run, *snapshot.Snapshot, error) {
	switch {
	case ref == latestRun && !asOf.IsZero():
		runs, err := cluster.LoadRuns(ctx, r, time.Now(), warnUnreadableRun)
		if err != nil {
			return nil, nil, err
		}
		run, err := cluster.RunAsOf(runs, f.Cluster, asOf)
		return run, nil, err
	case ref == latestRun:
		run, err := findRun(ctx, r, "latest", f.Cluster)
		return run, nil, err
	case ref == "latest" && !asOf.IsZero():
		sn, err := findAsOf(ctx, r, asOf, f)
		return nil, sn, err
	case ref == "latest":
		sn, err := findSnapshot(ctx, r, ref, f)
		return nil, sn, err
	case strings.Trim(strings.ToLower(ref), "0123456789abcdef") == "":
		return findSnapshotOrRun(ctx, r, ref)
	}
	if err := cluster.CheckRunID(ref); err != nil {
		return nil, nil, err
	}
	run, err := findRun(ctx, r, ref, "")
	return run, nil, err
}

// findSnapshotOrRun resolves hex digits, which may start a snapshot id or a
// run id (a UUID's first group). A whole snapshot id is only that.
func findSnapshotOrRun(ctx context.Context, r *repo.Repo, ref string) (*cluster.Run, *snapshot.Snapshot, error) {
	if len(ref) == 2*len(repo.ID{}) {
		sn, err := findSnapshot(ctx, r, ref, snapshot.Filter{})
		return nil, sn, err
	}
	id, serr := r.FindID(ctx, repo.SnapshotFile, ref)
	run, rerr := cluster.FindRun(ctx, r, ref, "", time.Now(), warnUnreadableRun)
	switch {
	case serr == nil && rerr == nil:
		return nil, nil, fmt.Errorf("%s starts both snapshot %s and run %s: give more of the id (a run id with its dashes)", ref, id.Short(), run.ID)
	case serr == nil:
		sn, err := snapshot.Load(ctx, r, id)
		return nil, sn, err
	case rerr == nil:
		return run, nil, nil
	case errors.Is(serr, repo.ErrNotFound) && errors.Is(rerr, cluster.ErrNoRun):
		return nil, nil, fmt.Errorf("no snapshot or run with id %s", ref)
	case !errors.Is(serr, repo.ErrNotFound):
		return nil, nil, serr
	}
	return nil, nil, rerr
}

func (job *restoreJob) snapshotToDir(ctx context.Context, sn *snapshot.Snapshot) error {
	out := job.out
	out.Verbosef("restoring snapshot %s of %v at %s to %s\n", sn.ID.Short(), sn.Paths, localTime(sn.Time), job.target)
	rep := out.reporter("written")
	opts := job.opts
	opts.Target, opts.Reporter = job.target, rep
	st, err := snapshot.Restore(ctx, job.store, sn, opts)
	rep.Done()
	if err != nil && !errors.Is(err, snapshot.ErrRestoreIncomplete) {
		return err
	}
	if perr := printRestoreSummary(out, sn, job.target, st, time.Since(job.started)); perr != nil {
		return perr
	}
	if err != nil {
		return fmt.Errorf("restore of snapshot %s to %s is incomplete: %d entries failed", sn.ID.Short(), job.target, st.Errors)
	}
	return nil
}

func (job *restoreJob) snapshotToLive(ctx context.Context, sn *snapshot.Snapshot) error {
	comp, err := job.cfg.ComponentOf(sn)
	if err != nil {
		return err
	}
	if err := job.live.Overrides.Check([]*cluster.Component{comp}); err != nil {
		return usageError(job.c, "%v", err)
	}
	rep := job.out.reporter("written")
	opts := job.live
	opts.Reporter = rep
	st, err := cluster.RestoreLive(ctx, job.store, comp, sn, opts)
	rep.Done()
	res := componentRestore{MessageType: "summary", Name: comp.Name, Node: nullable(sn.Hostname), Kind: comp.Kind,
		SnapshotID: nullable(sn.ID.String()), Target: job.liveWhere(comp, sn)}
	res.set(st, err)
	if job.out.json {
		if perr := job.out.JSON(res); perr != nil {
			return perr
		}
	} else {
		job.printComponent(res, sn)
	}
	if err != nil {
		return fmt.Errorf("component %s: %w", comp.Name, err)
	}
	return nil
}

// componentRestore is what became of one component; it is also the JSON
// form.
type componentRestore struct {
	MessageType   string  `json:"message_type,omitempty"` // "summary" when it is the whole restore
	Name          string  `json:"name"`
	Node          *string `json:"node"`
	Kind          string  `json:"kind"`
	Phase         string  `json:"phase"`
	SnapshotID    *string `json:"snapshot_id"`
	Target        string  `json:"target"`
	Restored      bool    `json:"restored"`
	FilesRestored int     `json:"files_restored"`
	DirsRestored  int     `json:"dirs_restored"`
	BytesRestored int64   `json:"bytes_restored"`
	FilesSkipped  int     `json:"files_skipped"`
	FilesDeleted  int     `json:"files_deleted"`
	Errors        int     `json:"errors"`
	Error         *string `json:"error"`
}

func (res *componentRestore) set(st snapshot.RestoreStats, err error) {
	res.FilesRestored, res.DirsRestored, res.BytesRestored = st.Files+st.Others, st.Dirs, st.Bytes
	res.FilesSkipped, res.FilesDeleted, res.Errors = st.Skipped, st.Deleted, st.Errors
	switch {
	case errors.Is(err, snapshot.ErrRestoreIncomplete):
		res.Error = nullable(fmt.Sprintf("incomplete: %d entries failed", st.Errors))
	case err != nil:
		res.Error = nullable(oneLine(err))
	default:
		res.Restored = true
	}
}

// runRestoreSummary is the last line of a run restore with --json.
type runRestoreSummary struct {
	MessageType     string             `json:"message_type"`
	RunID           string             `json:"run_id"`
	Cluster         string             `json:"cluster"`
	Phase           string             `json:"phase"`
	Target          *string            `json:"target"` // null for --to-live
	Components      []componentRestore `json:"components"`
	DurationSeconds float64            `json:"duration_seconds"`
}

// restoreTask is one component of a run to restore: where it goes and how.
type restoreTask struct {
	part    cluster.Part
	problem error // set: it cannot be restored
	restore func(context.Context, *snapshot.Snapshot, snapshot.Reporter) (snapshot.RestoreStats, error)
	where   func(*snapshot.Snapshot) string
}

func (job *restoreJob) runToDir(ctx context.Context, r *repo.Repo, run *cluster.Run) error {
	parts, err := cluster.Parts(run, job.globs)
	if err != nil {
		return err
	}
	var tasks []restoreTask
	for _, p := range parts {
		dir := filepath.Join(job.target, filepath.FromSlash(p.Dir))
		tasks = append(tasks, restoreTask{
			part: p, problem: p.Problem(),
			restore: func(ctx context.Context, sn *snapshot.Snapshot, rep snapshot.Reporter) (snapshot.RestoreStats, error) {
				opts := job.opts
				opts.Target, opts.Reporter = dir, rep
				return snapshot.Restore(ctx, job.store, sn, opts)
			},
			where: func(*snapshot.Snapshot) string { return dir },
		})
	}
	return job.restoreRun(ctx, r, run, tasks)
}

func (job *restoreJob) runToLive(ctx context.Context, r *repo.Repo, run *cluster.Run) error {
	node := job.c.String("node")
	if node == "" {
		var err error
		if node, err = os.Hostname(); err != nil {
			return fmt.Errorf("hostname: %w (give --node)", err)
		}
	}
	lps, err := job.cfg.LiveParts(run, node, job.globs)
	if err != nil {
		return err
	}
	var comps []*cluster.Component
	for _, lp := range lps {
		comps = append(comps, lp.Component)
	}
	if err := job.live.Overrides.Check(comps); err != nil {
		return usageError(job.c, "%v", err)
	}
	var tasks []restoreTask
	for _, lp := range lps {
		p := lp.Part
		if p.Name == "" {
			p.Name, p.Kind = lp.Component.Name, lp.Component.Kind
		}
		comp := lp.Component
		tasks = append(tasks, restoreTask{
			part: p, problem: lp.Err,
			restore: func(ctx context.Context, sn *snapshot.Snapshot, rep snapshot.Reporter) (snapshot.RestoreStats, error) {
				opts := job.live
				opts.Reporter = rep
				return cluster.RestoreLive(ctx, job.store, comp, sn, opts)
			},
			where: func(sn *snapshot.Snapshot) string { return job.liveWhere(comp, sn) },
		})
	}
	return job.restoreRun(ctx, r, run, tasks)
}

// restoreRun restores each task in turn. A component that cannot be
// restored does not stop the others; the error at the end names them all.
func (job *restoreJob) restoreRun(ctx context.Context, r *repo.Repo, run *cluster.Run, tasks []restoreTask) error {
	out := job.out
	where := job.target
	if job.toLive {
		where = "the live system"
	}
	out.Printf("restoring run %s of cluster %s (%s, started %s) to %s\n", run.ID, run.Cluster, run.Phase, localTime(run.Started), where)
	sum := runRestoreSummary{MessageType: "summary", RunID: run.ID, Cluster: run.Cluster, Phase: run.Phase,
		Components: []componentRestore{}}
	if !job.toLive {
		sum.Target = &job.target
	}
	var failed []string
	for _, task := range tasks {
		p := task.part
		res := componentRestore{Name: p.Name, Node: nullable(p.Node), Kind: p.Kind, Phase: p.Phase,
			SnapshotID: nullable(p.SnapshotID)}
		err := task.problem
		var sn *snapshot.Snapshot
		if err == nil {
			sn, err = loadPartSnapshot(ctx, r, p)
		}
		if err == nil {
			res.Target = task.where(sn)
			rep := out.reporter("written")
			var st snapshot.RestoreStats
			st, err = task.restore(ctx, sn, rep)
			rep.Done()
			res.set(st, err)
		} else {
			res.Error = nullable(oneLine(err))
		}
		if ctxErr := ctx.Err(); ctxErr != nil {
			return ctxErr
		}
		if err != nil {
			failed = append(failed, fmt.Sprintf("%s (%s)", partName(p), oneLine(err)))
		}
		sum.Components = append(sum.Components, res)
		if !out.json {
			job.printComponent(res, sn)
		}
	}
	sum.DurationSeconds = time.Since(job.started).Seconds()
	if out.json {
		if err := out.JSON(sum); err != nil {
			return err
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("run %s: %d of %d components not restored: %s", run.ID, len(failed), len(tasks), strings.Join(failed, "; "))
	}
	return nil
}

func partName(p cluster.Part) string {
	if p.Node == "" {
		return p.Name
	}
	return p.Name + " on " + p.Node
}

// loadPartSnapshot loads the snapshot of a run's component.
func loadPartSnapshot(ctx context.Context, r *repo.Repo, p cluster.Part) (*snapshot.Snapshot, error) {
	id, err := repo.ParseID(p.SnapshotID)
	if err != nil {
		return nil, fmt.Errorf("the run names snapshot %q: %w", p.SnapshotID, err)
	}
	sn, err := snapshot.Load(ctx, r, id)
	if errors.Is(err, repo.ErrNotFound) {
		return nil, fmt.Errorf("its snapshot %s no longer exists (forgotten)", id.Short())
	}
	return sn, err
}

func (job *restoreJob) printComponent(res componentRestore, sn *snapshot.Snapshot) {
	name := res.Name
	if res.Node != nil {
		name += " on " + *res.Node
	}
	if res.Error != nil && res.Target == "" {
		job.out.Printf("component %s (%s): not restored: %s\n", name, res.Kind, *res.Error)
		return
	}
	line := fmt.Sprintf("component %s (%s): snapshot %s", name, res.Kind, sn.ID.Short())
	if res.Error != nil {
		job.out.Printf("%s: restore failed: %s\n", line, *res.Error)
		return
	}
	where := res.Target
	if !job.toLive {
		where = "to " + where
	}
	job.out.Printf("%s restored %s: %d files, %d dirs, %s\n", line, where, res.FilesRestored, res.DirsRestored, formatBytes(res.BytesRestored))
	if res.Phase != "" && res.Phase != cluster.PhaseCompleted {
		job.out.Printf("  note: its phase in the run is %s\n", res.Phase)
	}
	if res.FilesSkipped > 0 {
		job.out.Printf("  %d files left alone by the --overwrite policy\n", res.FilesSkipped)
	}
	if res.FilesDeleted > 0 {
		job.out.Printf("  %d files deleted\n", res.FilesDeleted)
	}
}

// liveWhere says where a restore to live puts comp, for people. A DSN is
// not shown: it may hold a password.
func (job *restoreJob) liveWhere(comp *cluster.Component, sn *snapshot.Snapshot) string {
	t, _ := comp.LiveTarget(job.live.Overrides, false)
	switch comp.Kind {
	case "files":
		return "to " + strings.Join(sn.Paths, ", ")
	case "command":
		if len(comp.Restore.Command) > 0 {
			return "through " + comp.Restore.Command[0]
		}
	case "postgres", "mysql":
		return "into the target database"
	case "etcd":
		return "into data directory " + t.DataDir
	case "redis":
		return "as " + filepath.Join(t.DataDir, "dump.rdb")
	case "s3":
		return "into bucket " + firstNonEmpty(job.live.Overrides.Bucket, comp.Restore.Bucket, comp.Bucket)
	}
	return "into the live system"
}

func firstNonEmpty(vals ...string) string {
	for _, v := range vals {
		if v != "" {
			return v
		}
	}
	return ""
}

// asOfLimit makes a time given to the second cover that whole second, so a
// snapshot shown as 12:00:00 (taken at 12:00:00.4) is "at or before 12:00:00".
func asOfLimit(t time.Time) time.Time {
	if t.Nanosecond() == 0 {
		return t.Add(time.Second - time.Nanosecond)
	}
	return t
}

// findAsOf returns the newest snapshot matching f taken at or before limit.
func findAsOf(ctx context.Context, r *repo.Repo, limit time.Time, f snapshot.Filter) (*snapshot.Snapshot, error) {
	list, err := snapshot.List(ctx, r, warnUnreadable)
	if err != nil {
		return nil, err
	}
	for i := len(list) - 1; i >= 0; i-- {
		if sn := list[i]; !sn.Time.After(limit) && f.Match(sn) {
			return sn, nil
		}
	}
	return nil, fmt.Errorf("no snapshot matches at or before %s", localTime(limit))
}

func printRestoreSummary(out *output, sn *snapshot.Snapshot, target string, st snapshot.RestoreStats, d time.Duration) error {
	if out.json {
		return out.JSON(restoreSummary{
			MessageType: "summary", SnapshotID: sn.ID.String(), Target: target,
			FilesRestored: st.Files, DirsRestored: st.Dirs, OthersRestored: st.Others, BytesRestored: st.Bytes,
			FilesSkipped: st.Skipped, FilesDeleted: st.Deleted, FilesVerified: st.Verified, Errors: st.Errors,
			DurationSeconds: d.Seconds(),
		})
	}
	out.Printf("restored snapshot %s to %s: %d files, %d dirs, %s in %s\n",
		sn.ID.Short(), target, st.Files, st.Dirs, formatBytes(st.Bytes), formatDuration(d))
	if st.Others > 0 {
		out.Printf("%d other entries (symlinks, devices, fifos)\n", st.Others)
	}
	if st.Skipped > 0 {
		out.Printf("%d files left alone by the --overwrite policy\n", st.Skipped)
	}
	if st.Deleted > 0 {
		out.Printf("%d files deleted from the target\n", st.Deleted)
	}
	if st.Verified > 0 {
		out.Printf("%d files verified\n", st.Verified)
	}
	return nil
}
