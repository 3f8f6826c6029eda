package tests

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"
)

// The tests in this file cover `cairn backup` (docs/cli.md, "cairn backup").

// sourceTree writes a small tree of random files and returns the number of
// files, of directories (root included) and of bytes.
func sourceTree(t *testing.T, root string) (files, dirs int, size int64) {
	t.Helper()
	sizes := map[string]int{
		"a.txt":          100,
		"b.bin":          1500 << 10, // more than one chunk
		"d1/c":           1,
		"d1/d":           40 << 10,
		"d1/d2/e":        7,
		"d1/d2/f":        700 << 10,
		"d3/g":           3000,
		"d3/h":           0,
		"d3/i":           12345,
		"d1/d2/deep.dat": 5,
	}
	seed := uint64(100)
	for name, n := range sizes {
		seed++
		WriteFile(t, filepath.Join(root, name), randomBytes(seed, n))
		size += int64(n)
	}
	return len(sizes), 4, size
}

func TestBackupSummary(t *testing.T) {
	t.Parallel()
	e := NewRepo(t)
	src := filepath.Join(e.Dir, "src")
	nfiles, ndirs, size := sourceTree(t, src)

	// First run: everything is new.
	r := e.Must("backup", "--json", src)
	lines := strings.Split(strings.TrimSpace(r.Stdout), "\n")
	sum := JSONLines(t, lines[len(lines)-1])[0]
	if sum["message_type"] != "summary" {
		t.Fatalf("the last line of backup --json is not the summary:\n%s", r.Stdout)
	}
	for _, k := range []string{"snapshot_id", "files_new", "files_changed", "files_unmodified", "dirs_new",
		"dirs_changed", "dirs_unmodified", "data_blobs", "data_added", "total_files_processed",
		"total_bytes_processed", "duration_seconds"} {
		if _, ok := sum[k]; !ok {
			t.Errorf("summary has no %q: %v", k, sum)
		}
	}
	first, _ := sum["snapshot_id"].(string)
	if !hex64.MatchString(first) {
		t.Fatalf("snapshot_id %q is not 64 hex digits", first)
	}
	wantCounts(t, "first backup", sum, map[string]int64{
		"files_new": int64(nfiles), "files_changed": 0, "files_unmodified": 0,
		"dirs_new": int64(ndirs), "dirs_changed": 0, "dirs_unmodified": 0,
		"total_files_processed": int64(nfiles), "total_bytes_processed": size,
	})
	if n := intField(t, sum, "data_blobs"); n < int64(nfiles)-1 { // the empty file has no blob
		t.Errorf("first backup: data_blobs %d for %d distinct files", n, nfiles)
	}
	if n := intField(t, sum, "data_added"); n < size {
		t.Errorf("first backup: data_added %d, less than the %d bytes of random data", n, size)
	}
	if got := snapIDs(e.Snapshots()); !slices.Equal(got, []string{first}) {
		t.Errorf("snapshots after the first backup: %v, want [%s]", got, first)
	}

	// Nothing changed: nothing read, no data added.
	sum = Summary(t, e.Must("backup", "--json", src).Stdout)
	wantCounts(t, "unchanged backup", sum, map[string]int64{
		"files_new": 0, "files_changed": 0, "files_unmodified": int64(nfiles),
		"dirs_new": 0, "dirs_changed": 0, "dirs_unmodified": int64(ndirs),
		"data_blobs": 0, "total_files_processed": int64(nfiles),
	})
	// Only the trees of the directories above src may differ.
	if n := intField(t, sum, "data_added"); n > 64<<10 {
		t.Errorf("unchanged backup added %d bytes", n)
	}
	second := sum["snapshot_id"].(string)
	list := e.Snapshots()
	if len(list) != 2 || list[1]["id"] != second || list[1]["parent"] != first {
		t.Errorf("second snapshot should name the first as parent: %v", list)
	}

	// One file modified, one added.
	WriteFile(t, filepath.Join(src, "d1", "d"), randomBytes(1, 41<<10))
	WriteFile(t, filepath.Join(src, "d3", "new"), randomBytes(2, 2000))
	sum = Summary(t, e.Must("backup", "--json", src).Stdout)
	wantCounts(t, "backup after changes", sum, map[string]int64{
		"files_new": 1, "files_changed": 1, "files_unmodified": int64(nfiles - 1),
		// d1 and d3 changed, and so did src that holds them; d2 did not.
		"dirs_new": 0, "dirs_changed": 3, "dirs_unmodified": 1,
		"total_files_processed": int64(nfiles + 1),
	})
	if n := intField(t, sum, "data_added"); n < (41<<10)+2000 || n > (41<<10)+2000+(64<<10) {
		t.Errorf("backup after changes: data_added %d, want the %d new bytes and some trees", n, (41<<10)+2000)
	}

	// --force reads every file again, and finds nothing new to store.
	size += (41 << 10) - (40 << 10) + 2000
	sum = Summary(t, e.Must("backup", "--json", "--force", src).Stdout)
	if n := intField(t, sum, "files_unmodified"); n != 0 {
		t.Errorf("--force: %d files taken unread from the parent", n)
	}
	if n := intField(t, sum, "files_new") + intField(t, sum, "files_changed"); n != int64(nfiles+1) {
		t.Errorf("--force: %d files new or changed, want all %d", n, nfiles+1)
	}
	wantCounts(t, "--force", sum, map[string]int64{
		"data_blobs": 0, "total_files_processed": int64(nfiles + 1), "total_bytes_processed": size,
	})
	if n := intField(t, sum, "data_added"); n > 64<<10 {
		t.Errorf("--force on unchanged files added %d bytes", n)
	}

	// The text output ends with the snapshot line.
	r = e.Must("backup", src)
	list = e.Snapshots()
	short := list[len(list)-1]["short_id"].(string)
	if !strings.Contains(r.Stdout, "snapshot "+short+" saved") {
		t.Errorf("backup output lacks %q:\n%s", "snapshot "+short+" saved", r.Stdout)
	}
}

func wantCounts(t *testing.T, what string, sum map[string]any, want map[string]int64) {
	t.Helper()
	keys := make([]string, 0, len(want))
	for k := range want {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if got := intField(t, sum, k); got != want[k] {
			t.Errorf("%s: %s = %d, want %d", what, k, got, want[k])
		}
	}
}

func TestBackupDryRun(t *testing.T) {
	t.Parallel()
	e := NewRepo(t)
	src := filepath.Join(e.Dir, "src")
	nfiles, _, _ := sourceTree(t, src)
	before := repoListing(t, e)

	sum := Summary(t, e.Must("backup", "--dry-run", "--json", src).Stdout)
	if n := intField(t, sum, "files_new"); n != int64(nfiles) {
		t.Errorf("dry run: files_new %d, want %d", n, nfiles)
	}
	if after := repoListing(t, e); !slices.Equal(before, after) {
		t.Errorf("dry run changed the repository:\nbefore %v\nafter  %v", before, after)
	}
	if n := len(e.Snapshots()); n != 0 {
		t.Errorf("dry run saved %d snapshots", n)
	}
	r := e.Must("backup", "--dry-run", src)
	if regexp.MustCompile(`snapshot [0-9a-f]{8} saved`).MatchString(r.Stdout) {
		t.Errorf("dry run says it saved a snapshot:\n%s", r.Stdout)
	}

	// After a real backup, a dry run over changes stores nothing either.
	e.Must("backup", src)
	WriteFile(t, filepath.Join(src, "more"), randomBytes(9, 100<<10))
	before = repoListing(t, e)
	sum = Summary(t, e.Must("backup", "-n", "--json", src).Stdout)
	wantCounts(t, "dry run after changes", sum, map[string]int64{"files_new": 1, "files_unmodified": int64(nfiles)})
	if after := repoListing(t, e); !slices.Equal(before, after) {
		t.Errorf("dry run changed the repository:\nbefore %v\nafter  %v", before, after)
	}
	if n := len(e.Snapshots()); n != 1 {
		t.Errorf("%d snapshots, want 1", n)
	}
}

func TestBackupTagsHostTime(t *testing.T) {
	t.Parallel()
	e := NewRepo(t)
	src := filepath.Join(e.Dir, "src")
	WriteFile(t, filepath.Join(src, "f"), []byte("f"))

	// The hostname defaults to this host's.
	e.Must("backup", src)
	host, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	if got := e.Snapshots()[0]["hostname"]; got != host {
		t.Errorf("default hostname %v, want %s", got, host)
	}

	e.Must("backup", src, "--tag", "a", "--tag", "b,c", "--host", "myhost", "--time", "2001-02-03 04:05:06+02:00")
	sn := e.Snapshots("--host", "myhost")
	if len(sn) != 1 {
		t.Fatalf("snapshots --host myhost: %v", sn)
	}
	if got := fmt.Sprint(sn[0]["tags"]); got != "[a b c]" {
		t.Errorf("tags %s, want [a b c]", got)
	}
	wantTime(t, sn[0], time.Date(2001, 2, 3, 4, 5, 6, 0, time.FixedZone("", 2*3600)))

	e.Must("backup", src, "--host", "utc", "--time", "2001-02-03T04:05:06Z")
	wantTime(t, e.Snapshots("--host", "utc")[0], time.Date(2001, 2, 3, 4, 5, 6, 0, time.UTC))

	// Without an offset the time is local: run in a zone that is not UTC.
	loc, err := time.LoadLocation("Asia/Kolkata")
	if err != nil {
		t.Skipf("no time zone database for a local-time check: %v", err)
	}
	ist := *e
	ist.Extra = append(slices.Clone(e.Extra), "TZ=Asia/Kolkata")
	ist.Must("backup", src, "--host", "local", "--time", "2001-02-03 04:05:06")
	sn = ist.Snapshots("--host", "local")
	wantTime(t, sn[0], time.Date(2001, 2, 3, 4, 5, 6, 0, loc))
	if s := fmt.Sprint(sn[0]["time"]); !strings.HasSuffix(s, "+05:30") {
		t.Errorf("time %s is not shown in the local zone (+05:30)", s)
	}
	r := ist.Must("snapshots", "--host", "local")
	if !strings.Contains(r.Stdout, "2001-02-03 04:05:06") {
		t.Errorf("the table does not show the local time 2001-02-03 04:05:06:\n%s", r.Stdout)
	}

	wantErrLine(t, e.Fails(1, "backup", src, "--time", "yesterday"), "yesterday")
}

func wantTime(t *testing.T, sn map[string]any, want time.Time) {
	t.Helper()
	got, err := time.Parse(time.RFC3339Nano, fmt.Sprint(sn["time"]))
	if err != nil {
		t.Errorf("time %v: %v", sn["time"], err)
		return
	}
	if !got.Equal(want) {
		t.Errorf("snapshot time %s, want %s", got, want)
	}
}

func TestBackupParent(t *testing.T) {
	t.Parallel()
	e := NewRepo(t)
	src := filepath.Join(e.Dir, "src")
	nfiles, _, _ := sourceTree(t, src)

	s1 := backupID(t, e, src)
	// Another host's snapshot has no parent: every file is new to it.
	r := e.Must("backup", "--json", src, "--host", "other")
	sum := Summary(t, r.Stdout)
	s2 := sum["snapshot_id"].(string)
	wantCounts(t, "other host", sum, map[string]int64{"files_new": int64(nfiles), "files_unmodified": 0})
	// --parent picks s1 although s2 is the latest of host "other".
	sum = Summary(t, e.Must("backup", "--json", src, "--host", "other", "--parent", s1[:8]).Stdout)
	wantCounts(t, "--parent", sum, map[string]int64{"files_new": 0, "files_unmodified": int64(nfiles)})
	s3 := sum["snapshot_id"].(string)
	parents := map[string]any{}
	for _, sn := range e.Snapshots() {
		parents[sn["id"].(string)] = sn["parent"]
	}
	if parents[s2] != nil || parents[s3] != s1 {
		t.Errorf("parents: %s -> %v (want null), %s -> %v (want %s)", s2, parents[s2], s3, parents[s3], s1)
	}
	wantErrLine(t, e.Fails(1, "backup", src, "--parent", "abcdef12"), "parent", "abcdef12")
}

func TestBackupExcludes(t *testing.T) {
	t.Parallel()
	e := NewRepo(t)
	src := filepath.Join(e.Dir, "src")
	for _, name := range []string{"keep.txt", "skip.log", "sub/keep.txt", "sub/skip.log", "cache/data.bin",
		"UPPER.TMP", "lower.tmp", "notes/x.bak", "notes/y.txt", "other/z.txt"} {
		WriteFile(t, filepath.Join(src, name), []byte(name))
	}
	all := []string{"keep.txt", "skip.log", "sub", "sub/keep.txt", "sub/skip.log", "cache", "cache/data.bin",
		"UPPER.TMP", "lower.tmp", "notes", "notes/x.bak", "notes/y.txt", "other", "other/z.txt"}
	without := func(drop ...string) []string {
		var out []string
		for _, p := range all {
			if !slices.Contains(drop, p) {
				out = append(out, p)
			}
		}
		sort.Strings(out)
		return out
	}
	excludeFile := filepath.Join(e.Dir, "excludes")
	WriteFile(t, excludeFile, []byte("# backup files\n*.bak\n\n"+src+"/other\n"))

	cases := []struct {
		args []string
		want []string
	}{
		{nil, without()},
		{[]string{"--exclude", "*.log", "--exclude", "cache"}, without("skip.log", "sub/skip.log", "cache", "cache/data.bin")},
		{[]string{"--exclude", "*.tmp"}, without("lower.tmp")},
		{[]string{"--iexclude", "*.tmp"}, without("lower.tmp", "UPPER.TMP")},
		{[]string{"--exclude-file", excludeFile}, without("notes/x.bak", "other", "other/z.txt")},
		{[]string{"--exclude", "sub/*.log", "--iexclude", "NOTES"}, without("sub/skip.log", "notes", "notes/x.bak", "notes/y.txt")},
	}
	for _, c := range cases {
		id := backupID(t, e, append([]string{src}, c.args...)...)
		if got := storedPaths(t, e, id, src); !slices.Equal(got, c.want) {
			t.Errorf("backup %v stored\n%v\nwant\n%v", c.args, got, c.want)
		}
	}
	wantErrLine(t, e.Fails(1, "backup", src, "--exclude-file", filepath.Join(e.Dir, "nosuch")), "nosuch")
}

// storedPaths lists what snapshot id holds below src, relative to src.
func storedPaths(t *testing.T, e *Env, id, src string) []string {
	t.Helper()
	var out []string
	for _, m := range JSONLines(t, e.Must("ls", "--json", id, src).Stdout) {
		p := fmt.Sprint(m["path"])
		if p != src {
			out = append(out, strings.TrimPrefix(p, src+"/"))
		}
	}
	sort.Strings(out)
	return out
}

func TestBackupOneFileSystem(t *testing.T) {
	t.Parallel()
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		t.Skip("unshare(1) is needed to mount a file system for this test")
	}
	e := NewRepo(t)
	src := filepath.Join(e.Dir, "src")
	mnt := filepath.Join(src, "mnt")
	WriteFile(t, filepath.Join(src, "a"), []byte("a"))
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	// A private mount namespace: the tmpfs is gone when the process ends.
	if out, err := exec.Command(unshare, "-m", "mount", "-t", "tmpfs", "tmpfs", mnt).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs here: %v %s", err, out)
	}
	cmd := e.Cmd()
	cmd.Path = unshare
	cmd.Args = []string{"unshare", "-m", "sh", "-c",
		`mount -t tmpfs tmpfs "$0" && echo inside > "$0/f" && "$@" --one-file-system && "$@"`,
		mnt, cairnBin, "backup", "-q", src}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("backups in a mount namespace: %v\n%s", err, out)
	}
	list := e.Snapshots()
	if len(list) != 2 {
		t.Fatalf("%d snapshots, want 2", len(list))
	}
	if got := storedPaths(t, e, list[0]["id"].(string), src); !slices.Equal(got, []string{"a", "mnt"}) {
		t.Errorf("--one-file-system stored %v, want [a mnt]", got)
	}
	if got := storedPaths(t, e, list[1]["id"].(string), src); !slices.Equal(got, []string{"a", "mnt", "mnt/f"}) {
		t.Errorf("without --one-file-system: %v, want [a mnt mnt/f]", got)
	}
}

func TestBackupStdin(t *testing.T) {
	t.Parallel()
	e := NewRepo(t)
	data := randomBytes(7, 3<<20+5)
	r := e.RunStdin(data, "backup", "--json", "--stdin", "--stdin-filename", "db.sql")
	if r.Code != 0 {
		t.Fatalf("%s", r)
	}
	id := Summary(t, r.Stdout)["snapshot_id"].(string)
	if d := e.Must("dump", id, "db.sql").Stdout; d != string(data) {
		t.Errorf("dump of the stdin file: %d bytes, want the %d given", len(d), len(data))
	}
	sn := e.Snapshots()
	if got := fmt.Sprint(sn[0]["paths"]); got != "[/db.sql]" {
		t.Errorf("paths of a stdin snapshot: %s, want [/db.sql]", got)
	}
	target := filepath.Join(e.Dir, "target")
	e.Must("restore", id, "--target", target)
	if got, err := os.ReadFile(filepath.Join(target, "db.sql")); err != nil || !bytes.Equal(got, data) {
		t.Errorf("restored stdin file: %d bytes (err %v), want %d", len(got), err, len(data))
	}

	// Without a name the file is "stdin".
	if r := e.RunStdin([]byte("hello"), "backup", "--stdin"); r.Code != 0 {
		t.Fatalf("%s", r)
	}
	if d := e.Must("dump", "latest", "/stdin").Stdout; d != "hello" {
		t.Errorf("dump latest /stdin: %q", d)
	}

	// A command's output.
	e.Must("backup", "--stdin-from-command", "--stdin-filename", "out.txt", "--", "sh", "-c", "printf data")
	if d := e.Must("dump", "latest", "out.txt").Stdout; d != "data" {
		t.Errorf("dump of a command's output: %q, want %q", d, "data")
	}
	e.Must("backup", "--stdin-from-command", "--", "sh", "-c", "printf more")
	if d := e.Must("dump", "latest", "sh").Stdout; d != "more" {
		t.Errorf("dump of the output of sh: %q, want %q", d, "more")
	}

	// A command that fails saves nothing, whatever it printed first.
	n := len(e.Snapshots())
	for _, script := range []string{"echo partial; exit 3", "head -c 3000000 /dev/urandom; exit 3"} {
		r := e.Fails(1, "backup", "--stdin-from-command", "--", "sh", "-c", script)
		wantErrLine(t, r, "exit status 3", "no snapshot")
		if got := len(e.Snapshots()); got != n {
			t.Errorf("a failed command left %d snapshots, want %d", got, n)
		}
	}
	wantErrLine(t, e.Fails(1, "backup", "--stdin-from-command", "--", filepath.Join(e.Dir, "nosuch-command")), "nosuch-command")
	if got := len(e.Snapshots()); got != n {
		t.Errorf("a missing command left %d snapshots, want %d", got, n)
	}
}

func TestBackupMissingPaths(t *testing.T) {
	t.Parallel()
	e := NewRepo(t)
	src := filepath.Join(e.Dir, "src")
	WriteFile(t, filepath.Join(src, "f"), []byte("f"))
	gone1, gone2 := filepath.Join(e.Dir, "gone1"), filepath.Join(e.Dir, "gone2")

	r := e.Fails(1, "backup", gone1, gone2)
	wantErrLine(t, r, "no snapshot")
	for _, p := range []string{gone1, gone2} {
		if !strings.Contains(r.Stderr, p) {
			t.Errorf("stderr does not name %s:\n%s", p, r.Stderr)
		}
	}
	if n := len(e.Snapshots()); n != 0 {
		t.Fatalf("%d snapshots after a backup of missing paths", n)
	}

	r = e.Run("backup", "--json", src, gone1)
	if r.Code != 3 {
		t.Fatalf("backup with one missing path: want exit 3, got\n%s", r)
	}
	if !strings.Contains(r.Stderr, gone1) {
		t.Errorf("stderr does not name %s:\n%s", gone1, r.Stderr)
	}
	wantErrLine(t, r, "saved")
	id := Summary(t, r.Stdout)["snapshot_id"].(string)
	list := e.Snapshots()
	if len(list) != 1 || list[0]["id"] != id {
		t.Fatalf("snapshots %v, want only %s", snapIDs(list), id)
	}
	if got := fmt.Sprint(list[0]["paths"]); got != "["+src+"]" {
		t.Errorf("paths %s, want [%s]", got, src)
	}
	if got := storedPaths(t, e, id, src); !slices.Equal(got, []string{"f"}) {
		t.Errorf("stored %v, want [f]", got)
	}
}

func TestBackupUnreadableFile(t *testing.T) {
	t.Parallel()
	// Root reads any file; without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH
	// it is bound by permissions like anyone else.
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		t.Skip("setpriv(1) is needed to drop root's right to read any file")
	}
	drop := "--bounding-set=-dac_override,-dac_read_search"
	if out, err := exec.Command(setpriv, drop, "true").CombinedOutput(); err != nil {
		t.Skipf("cannot drop capabilities here: %v %s", err, out)
	}
	e := NewRepo(t)
	src := filepath.Join(e.Dir, "src")
	WriteFile(t, filepath.Join(src, "ok"), []byte("ok"))
	WriteFile(t, filepath.Join(src, "secret"), []byte("secret"))
	chmod(t, filepath.Join(src, "secret"), 0)

	cmd := e.Cmd("backup", "--json", src)
	cmd.Path = setpriv
	cmd.Args = append([]string{"setpriv", drop, cairnBin}, cmd.Args[1:]...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	r := Result{Args: cmd.Args, Stdout: out.String(), Stderr: errb.String()}
	if ee, ok := err.(*exec.ExitError); ok {
		r.Code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	if r.Code != 3 {
		t.Fatalf("backup with an unreadable file: want exit 3, got\n%s", r)
	}
	if !strings.Contains(r.Stderr, filepath.Join(src, "secret")) {
		t.Errorf("stderr does not name the unreadable file:\n%s", r.Stderr)
	}
	sum := Summary(t, r.Stdout)
	wantCounts(t, "unreadable file", sum, map[string]int64{"files_new": 1})
	if got := storedPaths(t, e, sum["snapshot_id"].(string), src); !slices.Equal(got, []string{"ok"}) {
		t.Errorf("stored %v, want [ok]", got)
	}
}

// TestBackupDedupShiftedData checks the promise of content-defined
// chunking: a 200 MiB file with 1 byte inserted at its start and 10 in its
// middle adds under 5% of its size.
func TestBackupDedupShiftedData(t *testing.T) {
	const size = 200 << 20
	e := NewRepo(t)
	src := filepath.Join(e.Dir, "src")
	if err := os.Mkdir(src, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(src, "big")
	writeRandomFile(t, path, 42, size)
	sum := Summary(t, e.Must("backup", "--json", src).Stdout)
	if n := intField(t, sum, "data_added"); n < size {
		t.Fatalf("first backup added %d bytes of %d random ones", n, size)
	}

	// Insert 1 byte at the start and 10 in the middle, into a new file.
	edited := filepath.Join(e.Dir, "edited")
	func() {
		in, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		defer in.Close()
		f, err := os.Create(edited)
		if err != nil {
			t.Fatal(err)
		}
		w := bufio.NewWriterSize(f, 1<<20)
		w.WriteByte(0x5a)
		if _, err := io.CopyN(w, in, size/2); err != nil {
			t.Fatal(err)
		}
		w.WriteString("0123456789")
		if _, err := io.Copy(w, in); err != nil {
			t.Fatal(err)
		}
		if err := w.Flush(); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
	}()
	if err := os.Rename(edited, path); err != nil {
		t.Fatal(err)
	}
	want := fileHash(t, path)

	before := repoSize(t, e)
	sum = Summary(t, e.Must("backup", "--json", src).Stdout)
	grown := repoSize(t, e) - before
	limit := int64(size) * 5 / 100
	t.Logf("the edits grew the repository by %d bytes (%.2f%%), data_added %d",
		grown, 100*float64(grown)/size, intField(t, sum, "data_added"))
	if grown >= limit {
		t.Errorf("the repository grew by %d bytes, not under 5%% of %d", grown, size)
	}
	if n := intField(t, sum, "data_added"); n >= limit {
		t.Errorf("data_added %d, not under 5%% of %d", n, size)
	}
	wantCounts(t, "edited file", sum, map[string]int64{"files_changed": 1, "total_bytes_processed": size + 11})

	// The new version reads back as written.
	cmd := e.Cmd("dump", "latest", path)
	h := sha256.New()
	cmd.Stdout = h
	var errb bytes.Buffer
	cmd.Stderr = &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("dump: %v\n%s", err, errb.String())
	}
	if got := fmt.Sprintf("%x", h.Sum(nil)); got != want {
		t.Errorf("dump of the edited file differs from it")
	}
}

// writeRandomFile writes n incompressible bytes drawn from seed.
func writeRandomFile(t *testing.T, path string, seed uint64, n int64) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	var s [32]byte
	s[0], s[1] = byte(seed), byte(seed>>8)
	if _, err := io.CopyN(f, rand.NewChaCha8(s), n); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

func fileHash(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}
