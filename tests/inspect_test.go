package tests

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cairn-backup/cairn/tests/testenv"
)

// findResult is one element of find --json.
type findResult struct {
	Snapshot string           `json:"snapshot"`
	Hits     int              `json:"hits"`
	Matches  []map[string]any `json:"matches"`
}

func findJSON(t *testing.T, e *Env, args ...string) []findResult {
	t.Helper()
	r := e.Must(append([]string{"find", "--json"}, args...)...)
	var out []findResult
	if err := json.Unmarshal([]byte(r.Stdout), &out); err != nil {
		t.Fatalf("find --json %v: %v\n%s", args, err, r.Stdout)
	}
	if out == nil {
		t.Fatalf("find --json %v: %q, want an array", args, r.Stdout)
	}
	return out
}

// foundPaths maps each snapshot id of a find --json answer to the paths
// found in it.
func foundPaths(res []findResult) map[string][]string {
	out := map[string][]string{}
	for _, r := range res {
		for _, m := range r.Matches {
			out[r.Snapshot] = append(out[r.Snapshot], fmt.Sprint(m["path"]))
		}
	}
	return out
}

func TestFind(t *testing.T) {
	t.Parallel()
	e := NewRepo(t)
	src := filepath.Join(e.Dir, "src")
	WriteFile(t, filepath.Join(src, "docs", "report.txt"), []byte("first report"))
	WriteFile(t, filepath.Join(src, "docs", "notes.md"), []byte("notes"))
	WriteFile(t, filepath.Join(src, "img", "photo.JPG"), randomBytes(1, 2000))
	mtime := time.Date(2015, 3, 4, 5, 6, 7, 0, time.UTC)
	if err := os.Chtimes(filepath.Join(src, "docs", "report.txt"), mtime, mtime); err != nil {
		t.Fatal(err)
	}
	first := backupID(t, e, src)
	WriteFile(t, filepath.Join(src, "new", "report.txt"), []byte("second report!"))
	second := backupID(t, e, src)

	// A name at any depth, in every snapshot that has it.
	got := foundPaths(findJSON(t, e, "report.txt"))
	want := map[string][]string{
		first:  {src + "/docs/report.txt"},
		second: {src + "/docs/report.txt", src + "/new/report.txt"},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("find report.txt: %v, want %v", got, want)
	}

	// What a match says about the entry.
	res := findJSON(t, e, "--snapshot", second[:8], "new/report.txt")
	if len(res) != 1 || res[0].Snapshot != second || res[0].Hits != 1 || len(res[0].Matches) != 1 {
		t.Fatalf("find --snapshot %s new/report.txt: %+v", second[:8], res)
	}
	m := res[0].Matches[0]
	if m["path"] != src+"/new/report.txt" || m["type"] != "file" || intField(t, m, "size") != int64(len("second report!")) {
		t.Errorf("match: %v", m)
	}
	if m["permissions"] != "-rw-r--r--" {
		t.Errorf("permissions %v, want -rw-r--r--", m["permissions"])
	}
	res = findJSON(t, e, "--snapshot", first, "/**/docs/report.txt")
	if len(res) != 1 || len(res[0].Matches) != 1 {
		t.Fatalf("find an anchored path: %+v", res)
	}
	if mt, err := time.Parse(time.RFC3339Nano, fmt.Sprint(res[0].Matches[0]["mtime"])); err != nil || !mt.Equal(mtime) {
		t.Errorf("mtime %v (%v), want %v", res[0].Matches[0]["mtime"], err, mtime)
	}

	// Globs, and case.
	got = foundPaths(findJSON(t, e, "--snapshot", "latest", "*.md", "img/*"))
	if want := []string{src + "/docs/notes.md", src + "/img/photo.JPG"}; !slices.Equal(got[second], want) || len(got) != 1 {
		t.Errorf("find *.md img/* in latest: %v, want %v", got, want)
	}
	if res := findJSON(t, e, "*.jpg"); len(res) != 0 {
		t.Errorf("find is case-sensitive, but *.jpg found %+v", res)
	}
	got = foundPaths(findJSON(t, e, "--ignore-case", "*.jpg"))
	if len(got) != 2 || !slices.Equal(got[first], []string{src + "/img/photo.JPG"}) {
		t.Errorf("find --ignore-case *.jpg: %v", got)
	}
	if r := e.Must("find", "--json", "nothing-like-this"); strings.TrimSpace(r.Stdout) != "[]" {
		t.Errorf("find without a match: %q, want []", r.Stdout)
	}

	// The text output names the snapshots and lists the paths.
	r := e.Must("find", "report.txt")
	for _, s := range []string{first[:8], second[:8], src + "/docs/report.txt", src + "/new/report.txt"} {
		if !strings.Contains(r.Stdout, s) {
			t.Errorf("find report.txt output lacks %s:\n%s", s, r.Stdout)
		}
	}
	e.Fails(1, "find")
	wantErrLine(t, e.Fails(1, "find", "--snapshot", "ffffffff", "x"), "ffffffff")
}

func statsJSON(t *testing.T, e *Env, args ...string) map[string]any {
	t.Helper()
	r := e.Must(append([]string{"stats", "--json"}, args...)...)
	lines := JSONLines(t, r.Stdout)
	if len(lines) != 1 {
		t.Fatalf("stats --json %v: want one object:\n%s", args, r.Stdout)
	}
	return lines[0]
}

func TestStats(t *testing.T) {
	t.Parallel()
	e := NewRepo(t)
	src := filepath.Join(e.Dir, "src")
	text := []byte(strings.Repeat("a line of text that compresses well, over and over\n", 40000))
	random := randomBytes(7, 300<<10)
	WriteFile(t, filepath.Join(src, "text.log"), text)
	WriteFile(t, filepath.Join(src, "copy", "text.log"), text) // the same content again
	WriteFile(t, filepath.Join(src, "random.bin"), random)
	if err := os.Link(filepath.Join(src, "random.bin"), filepath.Join(src, "hardlink.bin")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("text.log", filepath.Join(src, "link")); err != nil {
		t.Fatal(err)
	}
	r1 := Summary(t, e.Must("backup", "--json", src).Stdout)
	// The duplicate is restored twice, the hard link once.
	size1 := int64(2*len(text) + len(random))
	entries1 := len(JSONLines(t, e.Must("ls", "latest", "--json").Stdout))

	more := randomBytes(8, 100<<10)
	WriteFile(t, filepath.Join(src, "more.bin"), more)
	r2 := Summary(t, e.Must("backup", "--json", src).Stdout)
	size2 := size1 + int64(len(more))
	entries2 := len(JSONLines(t, e.Must("ls", "latest", "--json").Stdout))

	s := statsJSON(t, e, r1["snapshot_id"].(string))
	if intField(t, s, "total_size") != size1 || intField(t, s, "total_file_count") != int64(entries1) {
		t.Errorf("stats of the first snapshot: %v, want total_size %d and total_file_count %d (what ls lists)", s, size1, entries1)
	}
	s = statsJSON(t, e, "--mode", "restore-size")
	if intField(t, s, "total_size") != size1+size2 || intField(t, s, "total_file_count") != int64(entries1+entries2) {
		t.Errorf("stats of both snapshots: %v, want total_size %d and total_file_count %d", s, size1+size2, entries1+entries2)
	}
	if _, ok := s["compression_ratio"]; ok {
		t.Errorf("restore-size has raw-data keys: %v", s)
	}

	// Every blob of the repository is referenced by the two snapshots,
	// each once: the backups' summaries add up to them.
	raw := statsJSON(t, e, "--mode", "raw-data")
	blobs := intField(t, r1, "data_blobs") + intField(t, r1, "tree_blobs") + intField(t, r2, "data_blobs") + intField(t, r2, "tree_blobs")
	if intField(t, raw, "total_blob_count") != blobs {
		t.Errorf("raw-data total_blob_count %d, want %d, the blobs the backups added", intField(t, raw, "total_blob_count"), blobs)
	}
	stored, uncompressed := intField(t, raw, "total_size"), intField(t, raw, "total_uncompressed_size")
	unique := int64(len(text) + len(random) + len(more))
	if uncompressed < unique || uncompressed > unique+unique/10 {
		t.Errorf("total_uncompressed_size %d, want the unique content, %d, and a little more", uncompressed, unique)
	}
	if stored >= uncompressed {
		t.Errorf("total_size %d is not below total_uncompressed_size %d", stored, uncompressed)
	}
	ratio, ok := raw["compression_ratio"].(float64)
	if !ok || ratio <= 1.2 || ratio < float64(uncompressed)/float64(stored)-0.01 || ratio > float64(uncompressed)/float64(stored)+0.01 {
		t.Errorf("compression_ratio %v, want uncompressed/stored = %.2f, well above 1", raw["compression_ratio"], float64(uncompressed)/float64(stored))
	}
	if n := intField(t, raw, "snapshots_count"); n != 2 {
		t.Errorf("snapshots_count %d, want 2", n)
	}
	// Only the second snapshot: everything but the first one's own trees.
	one := statsJSON(t, e, "--mode", "raw-data", "latest")
	if n := intField(t, one, "total_blob_count"); n >= blobs || n < blobs-intField(t, r1, "tree_blobs") {
		t.Errorf("raw-data of latest: %d blobs, want fewer than %d", n, blobs)
	}

	out := e.Must("stats", "--mode", "raw-data").Stdout
	for _, w := range []string{"Total Blob Count", "Compression Ratio", "Total Size"} {
		if !strings.Contains(out, w) {
			t.Errorf("stats output lacks %q:\n%s", w, out)
		}
	}
	wantErrLine(t, e.Fails(1, "stats", "--mode", "files"), "mode")
}

// copyJSON runs copy --json on dst and returns the summary and the ids of
// the copies by source id.
func copyJSON(t *testing.T, dst *Env, args ...string) (map[string]any, map[string]string) {
	t.Helper()
	r := dst.Must(append([]string{"copy", "--json"}, args...)...)
	copies := map[string]string{}
	var sum map[string]any
	for _, m := range JSONLines(t, r.Stdout) {
		switch m["message_type"] {
		case "snapshot":
			copies[fmt.Sprint(m["source"])] = fmt.Sprint(m["snapshot_id"])
		case "summary":
			sum = m
		}
	}
	if sum == nil {
		t.Fatalf("copy --json printed no summary:\n%s", r)
	}
	return sum, copies
}

// byTime maps each snapshot's time to it.
func byTime(list []map[string]any) map[string]map[string]any {
	out := map[string]map[string]any{}
	for _, sn := range list {
		out[fmt.Sprint(sn["time"])] = sn
	}
	return out
}

func TestCopy(t *testing.T) {
	t.Parallel()
	src := NewRepo(t)
	dst := NewEnv(t)
	dst.Password = "another password entirely"
	dst.Must("init")
	data := filepath.Join(src.Dir, "data")
	states := map[string]map[string][]byte{} // snapshot -> files
	files := writeRandomTree(t, data, 12, 200<<10, 3)
	WriteFile(t, filepath.Join(data, "text.log"), []byte(strings.Repeat("compressible\n", 50000)))
	files[filepath.Join(data, "text.log")] = []byte(strings.Repeat("compressible\n", 50000))
	if err := os.Symlink("text.log", filepath.Join(data, "link")); err != nil {
		t.Fatal(err)
	}
	first := backupID(t, src, data, "--tag", "one", "--time", "2024-01-01 10:00:00")
	states[first] = maps.Clone(files)
	name := filepath.Join(data, "added.bin")
	files[name] = randomBytes(4, 150<<10)
	WriteFile(t, name, files[name])
	second := backupID(t, src, data, "--tag", "two", "--time", "2024-01-02 10:00:00")
	states[second] = maps.Clone(files)

	// The source's password from a file, then from the environment.
	pwFile := writePassword(t, dst.Dir, src.Password)
	sum, copies := copyJSON(t, dst, "--from-repo", src.Repo, "--from-password-file", pwFile, first[:8])
	if intField(t, sum, "snapshots_copied") != 1 || copies[first] == "" {
		t.Fatalf("copy %s: %v %v", first[:8], sum, copies)
	}
	withPw := *dst
	withPw.Extra = append(slices.Clone(dst.Extra), "CAIRN_FROM_PASSWORD="+src.Password)
	sum, more := copyJSON(t, &withPw, "--from-repo", src.Repo)
	if intField(t, sum, "snapshots_copied") != 1 || intField(t, sum, "snapshots_skipped") != 1 || more[second] == "" {
		t.Fatalf("copy of everything after the first: %v %v", sum, more)
	}
	// What the first copy brought over is not read from the source again.
	if n := intField(t, sum, "data_read"); n != 150<<10 {
		t.Errorf("the second snapshot's copy read %d bytes of data, want only the new file's %d", n, 150<<10)
	}
	copies[second] = more[second]

	// A new snapshot costs the destination what it cost the source: only
	// what the destination lacks is copied.
	name = filepath.Join(data, "third.bin")
	files[name] = randomBytes(5, 120<<10)
	WriteFile(t, name, files[name])
	r := src.Must("backup", "--json", data, "--time", "2024-01-03 10:00:00")
	added := Summary(t, r.Stdout)
	third := added["snapshot_id"].(string)
	states[third] = maps.Clone(files)
	sum, more = copyJSON(t, &withPw, "--from-repo", src.Repo)
	if intField(t, sum, "snapshots_copied") != 1 || more[third] == "" {
		t.Fatalf("copy of the third snapshot: %v %v", sum, more)
	}
	copies[third] = more[third]
	if n := intField(t, sum, "data_read"); n != 120<<10 {
		t.Errorf("the third snapshot's copy read %d bytes of data, want only the new file's %d", n, 120<<10)
	}
	for _, k := range []string{"data_blobs", "tree_blobs"} {
		if intField(t, sum, k) != intField(t, added, k) {
			t.Errorf("copy of the third snapshot added %d %s, the backup %d", intField(t, sum, k), k, intField(t, added, k))
		}
	}

	// Copying again copies nothing and writes nothing.
	before := repoListing(t, dst)
	sum, more = copyJSON(t, &withPw, "--from-repo", src.Repo)
	if intField(t, sum, "snapshots_copied") != 0 || intField(t, sum, "snapshots_skipped") != 3 ||
		intField(t, sum, "data_blobs") != 0 || intField(t, sum, "tree_blobs") != 0 || len(more) != 0 {
		t.Errorf("second copy: %v %v, want nothing copied", sum, more)
	}
	if after := repoListing(t, dst); !slices.Equal(before, after) {
		t.Errorf("a copy of nothing changed the destination:\n%v\n%v", before, after)
	}

	// The copies are the snapshots: times, tags, paths, parents, content.
	srcSnaps, dstSnaps := byTime(src.Snapshots()), byTime(dst.Snapshots())
	if len(dstSnaps) != 3 {
		t.Fatalf("destination has %d snapshots, want 3", len(dstSnaps))
	}
	dstIDs := map[string]string{} // source id -> destination id, by time
	for tm, s := range srcSnaps {
		d := dstSnaps[tm]
		if d == nil {
			t.Fatalf("no copy of the snapshot of %s", tm)
		}
		dstIDs[fmt.Sprint(s["id"])] = fmt.Sprint(d["id"])
		for _, k := range []string{"hostname", "username", "paths", "tags", "summary"} {
			if fmt.Sprint(s[k]) != fmt.Sprint(d[k]) {
				t.Errorf("copy of %s: %s %v, want %v", tm, k, d[k], s[k])
			}
		}
	}
	for s, d := range copies {
		if dstIDs[s] != d {
			t.Errorf("copy reported %s as %s, the destination has it as %s", s[:8], d[:8], dstIDs[s][:8])
		}
	}
	for _, d := range dstSnaps {
		if fmt.Sprint(d["id"]) == copies[third] && fmt.Sprint(d["parent"]) != copies[second] {
			t.Errorf("the third copy's parent is %v, want the copy of the second, %s", d["parent"], copies[second])
		}
	}
	for s, want := range states {
		target := filepath.Join(dst.Dir, "restore-"+s[:8])
		dst.Must("restore", copies[s], "--target", target)
		checkRestored(t, target, want)
	}
	if got, err := os.Readlink(filepath.Join(dst.Dir, "restore-"+third[:8], data, "link")); err != nil || got != "text.log" {
		t.Errorf("restored symlink: %q, %v", got, err)
	}
	dst.Must("check", "--read-data")
	// Deduplicated and compressed alike on both sides.
	for _, mode := range []string{"restore-size", "raw-data"} {
		s, d := statsJSON(t, src, "--mode", mode), statsJSON(t, dst, "--mode", mode)
		for _, k := range []string{"total_file_count", "total_blob_count", "total_uncompressed_size"} {
			if fmt.Sprint(s[k]) != fmt.Sprint(d[k]) {
				t.Errorf("stats --mode %s %s: source %v, destination %v", mode, k, s[k], d[k])
			}
		}
	}

	// The source's password is its own, and the source must exist.
	wrong := *dst
	wrong.Extra = append(slices.Clone(dst.Extra), "CAIRN_FROM_PASSWORD="+dst.Password)
	wantErrLine(t, wrong.Fails(12, "copy", "--from-repo", src.Repo), "source", "password")
	missing := NewEnv(t)
	wantErrLine(t, withPw.Fails(10, "copy", "--from-repo", missing.Repo), "source", "does not exist")
	wantErrLine(t, withPw.Fails(1, "copy"), "--from-repo")
}

// TestCopyLocalAndS3 copies from a local repository into a bucket and
// from the bucket into another local repository.
func TestCopyLocalAndS3(t *testing.T) {
	t.Parallel()
	local := newLocalEnv(t)
	local.Must("init")
	data := filepath.Join(local.Dir, "data")
	files := writeRandomTree(t, data, 20, 100<<10, 9)
	local.Must("backup", data)

	var bucket *Env
	if testBackend == "s3" {
		bucket = NewEnv(t)
	} else {
		bucket = s3Env(t, testenv.MinIO(t), "cairn-copy")
	}
	bucket.Password = "the bucket's password"
	bucket.Must("init")
	toS3 := *bucket
	toS3.Extra = append(slices.Clone(bucket.Extra), "CAIRN_FROM_PASSWORD="+local.Password)
	sum, copies := copyJSON(t, &toS3, "--from-repo", local.Repo)
	if intField(t, sum, "snapshots_copied") != 1 || len(copies) != 1 {
		t.Fatalf("copy into the bucket: %v", sum)
	}
	sum, _ = copyJSON(t, &toS3, "--from-repo", local.Repo)
	if intField(t, sum, "snapshots_copied") != 0 || intField(t, sum, "data_blobs") != 0 {
		t.Errorf("second copy into the bucket: %v", sum)
	}
	target := filepath.Join(bucket.Dir, "from-s3")
	bucket.Must("restore", "latest", "--target", target)
	checkRestored(t, target, files)

	back := newLocalEnv(t)
	back.Password = "yet another one"
	back.Must("init")
	fromS3 := *back
	// The bucket's credentials come from the environment, as for --repo.
	fromS3.Extra = append(slices.Clone(bucket.Extra), "CAIRN_FROM_PASSWORD="+bucket.Password)
	sum, _ = copyJSON(t, &fromS3, "--from-repo", bucket.Repo)
	if intField(t, sum, "snapshots_copied") != 1 {
		t.Fatalf("copy out of the bucket: %v", sum)
	}
	target = filepath.Join(back.Dir, "from-local")
	back.Must("restore", "latest", "--target", target)
	checkRestored(t, target, files)
	// A copy of a copy still names the first snapshot: nothing to do when
	// copying from the first repository too.
	fromLocal := *back
	fromLocal.Extra = []string{"CAIRN_FROM_PASSWORD=" + local.Password}
	sum, _ = copyJSON(t, &fromLocal, "--from-repo", local.Repo)
	if intField(t, sum, "snapshots_copied") != 0 || intField(t, sum, "snapshots_skipped") != 1 {
		t.Errorf("copy of the same snapshot from its first repository: %v", sum)
	}
}
