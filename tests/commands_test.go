package tests

import (
	"archive/tar"
	"archive/zip"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
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

	"github.com/cairn-backup/cairn/repo"
	"github.com/cairn-backup/cairn/repo/s3"
)

// The tests in this file cover init, passwords, snapshots, ls, diff, dump,
// key, cat and version as docs/cli.md describes them.

var hex64 = regexp.MustCompile(`^[0-9a-f]{64}$`)

func TestInit(t *testing.T) {
	t.Parallel()
	e := NewEnv(t)
	r := e.Must("init")
	if !strings.Contains(r.Stdout, "created") {
		t.Errorf("init says nothing about what it created:\n%s", r)
	}
	configFile := repo.Handle{Type: repo.ConfigFile}
	config := readRepoFile(t, e, configFile)
	if keys := repoFiles(t, e, "keys"); len(keys) != 1 {
		t.Errorf("keys after init: %v, want one", keys)
	}

	r = e.Fails(1, "init")
	wantErrLine(t, r, "already exists")
	if again := readRepoFile(t, e, configFile); !bytes.Equal(again, config) {
		t.Errorf("a second init changed the config")
	}
	if keys := repoFiles(t, e, "keys"); len(keys) != 1 {
		t.Errorf("keys after a second init: %v, want one", keys)
	}
	if list := e.Snapshots(); len(list) != 0 {
		t.Errorf("new repository has snapshots: %v", list)
	}
}

func TestMissingRepository(t *testing.T) {
	t.Parallel()
	e := NewEnv(t)
	src := filepath.Join(e.Dir, "src")
	WriteFile(t, filepath.Join(src, "f"), []byte("x"))
	for _, args := range [][]string{
		{"snapshots"},
		{"backup", src},
		{"restore", "latest", "--target", filepath.Join(e.Dir, "target")},
		{"ls", "latest"},
		{"key", "list"},
	} {
		r := e.Fails(10, args...)
		wantErrLine(t, r, e.Repo, "does not exist", "cairn init")
	}
	if repoCreated(t, e) {
		t.Errorf("a command on a missing repository created %s", e.Repo)
	}
	if _, err := os.Stat(filepath.Join(e.Dir, "target")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("restore from a missing repository created its target (err %v)", err)
	}
}

func TestWrongPassword(t *testing.T) {
	t.Parallel()
	e := NewRepo(t)
	src := filepath.Join(e.Dir, "src")
	WriteFile(t, filepath.Join(src, "f"), []byte("content"))
	e.Must("backup", src)
	before := repoListing(t, e)

	bad := *e
	bad.Password = "not the password"
	WriteFile(t, filepath.Join(src, "g"), []byte("more"))
	for _, args := range [][]string{
		{"backup", src},
		{"snapshots"},
		{"restore", "latest", "--target", filepath.Join(e.Dir, "target")},
		{"key", "add", "--new-password-file", writePassword(t, e.Dir, "other")},
	} {
		r := bad.Fails(12, args...)
		wantErrLine(t, r, "password")
		if strings.Contains(r.Stderr, bad.Password) {
			t.Errorf("the error shows the password: %s", r.Stderr)
		}
	}
	if after := repoListing(t, e); !slices.Equal(before, after) {
		t.Errorf("commands with a wrong password changed the repository:\nbefore %v\nafter  %v", before, after)
	}
	if _, err := os.Stat(filepath.Join(e.Dir, "target")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("restore with a wrong password created its target (err %v)", err)
	}
	if n := len(e.Snapshots()); n != 1 {
		t.Errorf("%d snapshots, want 1", n)
	}
}

func TestPasswordSources(t *testing.T) {
	t.Parallel()
	e := NewEnv(t)
	pwFile := writePassword(t, e.Dir, "from a file")
	e.Password = "" // no CAIRN_PASSWORD

	// --password-file for init, then every other way to give the same password.
	e.Must("init", "--password-file", pwFile)
	e.Must("snapshots", "--password-file", pwFile)
	withEnv := *e
	withEnv.Extra = append(slices.Clone(e.Extra), "CAIRN_PASSWORD_FILE="+pwFile)
	withEnv.Must("snapshots")
	e.Must("snapshots", "--password-command", "cat "+pwFile)
	withCmd := *e
	withCmd.Extra = append(slices.Clone(e.Extra), "CAIRN_PASSWORD_COMMAND=cat "+pwFile)
	withCmd.Must("snapshots")
	plain := *e
	plain.Password = "from a file"
	plain.Must("snapshots")

	wrong := writePassword(t, e.Dir, "something else")
	wantErrLine(t, e.Fails(12, "snapshots", "--password-file", wrong), "password")
	wantErrLine(t, e.Fails(12, "snapshots", "--password-command", "cat "+wrong), "password")
	r := e.Fails(1, "snapshots", "--password-command", "false")
	wantErrLine(t, r, "password command")

	// No password at all, stdin not a terminal: an error, not a prompt
	// that waits forever.
	r = runBounded(t, e, "snapshots")
	if r.Code != 1 {
		t.Fatalf("no password: want exit 1, got:\n%s", r)
	}
	wantErrLine(t, r, "password")
}

// runBounded runs cairn with stdin from /dev/null and kills it if it has
// not ended after a minute, so that a command waiting for input fails the
// test instead of hanging it.
func runBounded(t *testing.T, e *Env, args ...string) Result {
	t.Helper()
	cmd := e.Cmd(args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-time.After(time.Minute):
		_ = cmd.Process.Kill()
		<-done
		t.Fatalf("cairn %v did not end within a minute with stdin at EOF", args)
	}
	r := Result{Args: args, Stdout: out.String(), Stderr: errb.String()}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		r.Code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestSnapshotsCommand(t *testing.T) {
	t.Parallel()
	e := NewRepo(t)
	src1 := filepath.Join(e.Dir, "one")
	src2 := filepath.Join(e.Dir, "two")
	WriteFile(t, filepath.Join(src1, "a"), []byte("a"))
	WriteFile(t, filepath.Join(src2, "b"), []byte("b"))

	// Given out of time order: the listing must still be oldest first.
	s2 := backupID(t, e, src1, "--host", "h1", "--tag", "daily", "--time", "2020-01-02 00:00:00")
	s1 := backupID(t, e, src1, "--host", "h1", "--time", "2020-01-01 00:00:00")
	s3 := backupID(t, e, src2, "--host", "h2", "--tag", "daily,db", "--time", "2020-01-03 00:00:00")
	s4 := backupID(t, e, src1, "--host", "h1", "--time", "2020-01-04 00:00:00")

	list := e.Snapshots()
	if got, want := snapIDs(list), []string{s1, s2, s3, s4}; !slices.Equal(got, want) {
		t.Fatalf("snapshots --json ids %v, want oldest first %v", got, want)
	}
	keys := []string{"id", "short_id", "time", "hostname", "username", "paths", "tags",
		"cluster", "component", "run", "parent", "tree", "summary"}
	for _, sn := range list {
		for _, k := range keys {
			if _, ok := sn[k]; !ok {
				t.Errorf("snapshot %v has no key %q", sn["id"], k)
			}
		}
		id, _ := sn["id"].(string)
		if !hex64.MatchString(id) {
			t.Errorf("id %q is not 64 hex digits", id)
		}
		if short, _ := sn["short_id"].(string); len(id) < 8 || short != id[:8] {
			t.Errorf("short_id %q of %s", short, id)
		}
		if _, err := time.Parse(time.RFC3339Nano, fmt.Sprint(sn["time"])); err != nil {
			t.Errorf("time %v is not RFC 3339: %v", sn["time"], err)
		}
		if tree, _ := sn["tree"].(string); !hex64.MatchString(tree) {
			t.Errorf("tree %q is not 64 hex digits", tree)
		}
		for _, k := range []string{"paths", "tags"} {
			if _, ok := sn[k].([]any); !ok {
				t.Errorf("%s of %s is %#v, want a list", k, id, sn[k])
			}
		}
		for _, k := range []string{"cluster", "component", "run"} {
			if sn[k] != nil {
				t.Errorf("%s of %s is %#v, want null", k, id, sn[k])
			}
		}
		if sum, ok := sn["summary"].(map[string]any); !ok {
			t.Errorf("summary of %s is %#v", id, sn["summary"])
		} else {
			intField(t, sum, "files_new")
		}
		if u, _ := sn["username"].(string); u == "" {
			t.Errorf("username of %s is empty", id)
		}
	}
	if got := list[0]["tags"].([]any); len(got) != 0 {
		t.Errorf("tags of an untagged snapshot: %v", got)
	}
	if got := fmt.Sprint(list[2]["tags"]); got != "[daily db]" {
		t.Errorf("tags of %s: %s, want [daily db]", s3, got)
	}
	if got := fmt.Sprint(list[2]["paths"]); got != "["+src2+"]" {
		t.Errorf("paths of %s: %s, want [%s]", s3, got, src2)
	}
	if list[0]["hostname"] != "h1" || list[2]["hostname"] != "h2" {
		t.Errorf("hostnames: %v, %v", list[0]["hostname"], list[2]["hostname"])
	}

	// The table names every snapshot by its short id, in the same order.
	r := e.Must("snapshots")
	var last int
	for _, id := range []string{s1, s2, s3, s4} {
		i := strings.Index(r.Stdout, id[:8])
		if i < 0 || i < last {
			t.Fatalf("table lacks %s or lists it out of order:\n%s", id[:8], r.Stdout)
		}
		last = i
	}
	if !strings.Contains(r.Stdout, "4 snapshots") {
		t.Errorf("table has no count line:\n%s", r.Stdout)
	}

	filters := []struct {
		args []string
		want []string
	}{
		{[]string{"--host", "h2"}, []string{s3}},
		{[]string{"--host", "h1"}, []string{s1, s2, s4}},
		{[]string{"--tag", "daily"}, []string{s2, s3}},
		{[]string{"--tag", "daily,db"}, []string{s3}},
		{[]string{"--tag", "db", "--tag", "nosuch"}, []string{s3}},
		{[]string{"--path", src2}, []string{s3}},
		{[]string{"--path", filepath.Join(e.Dir, "nosuch")}, nil},
		{[]string{"--latest", "1"}, []string{s3, s4}},
		{[]string{"--latest", "2", "--host", "h1"}, []string{s2, s4}},
	}
	for _, f := range filters {
		if got := snapIDs(e.Snapshots(f.args...)); !slices.Equal(got, f.want) {
			t.Errorf("snapshots %v: %v, want %v", f.args, got, f.want)
		}
	}
	// An empty result is [] in JSON, not null.
	r = e.Must("snapshots", "--json", "--host", "nosuch")
	if strings.TrimSpace(r.Stdout) != "[]" {
		t.Errorf("empty snapshots --json: %q, want []", r.Stdout)
	}
}

func TestLs(t *testing.T) {
	t.Parallel()
	e := NewRepo(t)
	src := filepath.Join(e.Dir, "src")
	WriteFile(t, filepath.Join(src, "top.txt"), []byte("top"))
	WriteFile(t, filepath.Join(src, "sub", "inner.bin"), randomBytes(1, 5000))
	chmod(t, filepath.Join(src, "sub", "inner.bin"), 0o640)
	chmod(t, filepath.Join(src, "top.txt"), 0o644)
	chmod(t, filepath.Join(src, "sub"), 0o755)
	if err := os.Symlink("top.txt", filepath.Join(src, "link")); err != nil {
		t.Fatal(err)
	}
	mtime := time.Date(2010, 5, 6, 7, 8, 9, 0, time.UTC)
	if err := os.Chtimes(filepath.Join(src, "top.txt"), mtime, mtime); err != nil {
		t.Fatal(err)
	}
	e.Must("backup", src)

	r := e.Must("ls", "latest")
	lines := strings.Split(strings.TrimSpace(r.Stdout), "\n")
	for _, want := range []string{src, src + "/top.txt", src + "/sub", src + "/sub/inner.bin", src + "/link"} {
		if !slices.Contains(lines, want) {
			t.Errorf("ls latest lacks %s:\n%s", want, r.Stdout)
		}
	}

	nodes := map[string]map[string]any{}
	for _, m := range JSONLines(t, e.Must("ls", "latest", "--json").Stdout) {
		for _, k := range []string{"path", "type", "size", "mode", "mtime", "uid", "gid"} {
			if _, ok := m[k]; !ok {
				t.Errorf("ls --json line without %q: %v", k, m)
			}
		}
		nodes[fmt.Sprint(m["path"])] = m
	}
	checks := []struct {
		path, typ string
		size      int64
		mode      int64
	}{
		{src + "/top.txt", "file", 3, 0o644},
		{src + "/sub/inner.bin", "file", 5000, 0o640},
		{src + "/sub", "dir", 0, 0o755},
		{src + "/link", "symlink", -1, -1},
	}
	for _, c := range checks {
		m := nodes[c.path]
		if m == nil {
			t.Errorf("ls --json lacks %s", c.path)
			continue
		}
		if m["type"] != c.typ {
			t.Errorf("%s: type %v, want %s", c.path, m["type"], c.typ)
		}
		if c.size >= 0 && intField(t, m, "size") != c.size {
			t.Errorf("%s: size %v, want %d", c.path, m["size"], c.size)
		}
		if c.mode >= 0 && intField(t, m, "mode")&0o7777 != c.mode {
			t.Errorf("%s: mode %o, want %o", c.path, intField(t, m, "mode"), c.mode)
		}
		if intField(t, m, "uid") != 0 || intField(t, m, "gid") != 0 {
			t.Errorf("%s: uid/gid %v/%v, want root's", c.path, m["uid"], m["gid"])
		}
	}
	if m := nodes[src+"/top.txt"]; m != nil {
		got, err := time.Parse(time.RFC3339Nano, fmt.Sprint(m["mtime"]))
		if err != nil || !got.Equal(mtime) {
			t.Errorf("mtime of top.txt: %v (%v), want %v", m["mtime"], err, mtime)
		}
	}

	// A subpath lists that directory and what is below it, nothing else.
	r = e.Must("ls", "latest", src+"/sub")
	got := strings.Fields(r.Stdout)
	if want := []string{src + "/sub", src + "/sub/inner.bin"}; !slices.Equal(got, want) {
		t.Errorf("ls latest %s/sub: %v, want %v", src, got, want)
	}
	r = e.Fails(1, "ls", "latest", src+"/nosuch")
	wantErrLine(t, r, "nosuch", "not found")
}

func TestDiff(t *testing.T) {
	t.Parallel()
	e := NewRepo(t)
	src := filepath.Join(e.Dir, "src")
	WriteFile(t, filepath.Join(src, "same"), []byte("unchanged"))
	WriteFile(t, filepath.Join(src, "gone"), []byte("12345"))
	WriteFile(t, filepath.Join(src, "edit"), []byte("abc"))
	WriteFile(t, filepath.Join(src, "olddir", "x"), []byte("x"))
	first := backupID(t, e, src)

	if err := os.Remove(filepath.Join(src, "gone")); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(src, "olddir")); err != nil {
		t.Fatal(err)
	}
	WriteFile(t, filepath.Join(src, "edit"), []byte("abcdefgh"))
	WriteFile(t, filepath.Join(src, "added"), []byte("0123456789"))
	WriteFile(t, filepath.Join(src, "newdir", "y"), []byte("yy"))
	second := backupID(t, e, src)

	r := e.Must("diff", first[:8], second[:8])
	for _, want := range []string{
		"- " + src + "/gone",
		"- " + src + "/olddir/",
		"- " + src + "/olddir/x",
		"M " + src + "/edit",
		"+ " + src + "/added",
		"+ " + src + "/newdir/",
		"+ " + src + "/newdir/y",
	} {
		if !strings.Contains(r.Stdout, want+"\n") {
			t.Errorf("diff lacks %q:\n%s", want, r.Stdout)
		}
	}
	if strings.Contains(r.Stdout, "/same") {
		t.Errorf("diff lists an unchanged file:\n%s", r.Stdout)
	}

	changes := map[string]string{}
	var stats map[string]any
	for _, m := range JSONLines(t, e.Must("diff", "--json", first, second).Stdout) {
		switch m["message_type"] {
		case "change":
			changes[fmt.Sprint(m["path"])] = fmt.Sprint(m["modifier"])
		case "statistics":
			stats = m
		default:
			t.Errorf("unexpected diff --json line: %v", m)
		}
	}
	want := map[string]string{
		src + "/gone": "-", src + "/olddir/": "-", src + "/olddir/x": "-",
		src + "/edit": "M", src + "/added": "+", src + "/newdir/": "+", src + "/newdir/y": "+",
	}
	if fmt.Sprint(changes) != fmt.Sprint(want) {
		t.Errorf("diff --json changes:\n%v\nwant\n%v", changes, want)
	}
	if stats == nil {
		t.Fatal("diff --json printed no statistics")
	}
	for k, v := range map[string]int64{
		"files_added": 2, "files_removed": 2, "files_changed": 1, "dirs_added": 1, "dirs_removed": 1,
		// added, newdir/y and the new content of edit; gone, olddir/x and the old edit
		"bytes_added": 10 + 2 + 8, "bytes_removed": 5 + 1 + 3,
	} {
		if got := intField(t, stats, k); got != v {
			t.Errorf("diff statistics %s = %d, want %d", k, got, v)
		}
	}

	// No change between a snapshot and itself.
	r = e.Must("diff", "--json", first, first)
	for _, m := range JSONLines(t, r.Stdout) {
		if m["message_type"] == "change" {
			t.Errorf("a snapshot differs from itself: %v", m)
		}
	}
	e.Fails(1, "diff", first)
}

func TestDump(t *testing.T) {
	t.Parallel()
	e := NewRepo(t)
	src := filepath.Join(e.Dir, "src")
	big := randomBytes(2, 3<<20+17) // several chunks
	files := map[string][]byte{
		"big.bin":      big,
		"sub/small":    []byte("small file\n"),
		"sub/deep/end": []byte("end"),
		"empty":        {},
	}
	for name, data := range files {
		WriteFile(t, filepath.Join(src, name), data)
	}
	chmod(t, filepath.Join(src, "sub", "small"), 0o600)
	chmod(t, filepath.Join(src, "sub", "deep", "end"), 0o644)
	chmod(t, filepath.Join(src, "sub"), 0o755)
	chmod(t, filepath.Join(src, "sub", "deep"), 0o755)
	id := backupID(t, e, src)

	r := e.Must("dump", "latest", src+"/big.bin")
	if !bytes.Equal([]byte(r.Stdout), big) {
		t.Errorf("dump of big.bin: %d bytes, not the file's %d", len(r.Stdout), len(big))
	}
	r = e.Must("dump", id[:8], src+"/empty")
	if r.Stdout != "" {
		t.Errorf("dump of an empty file: %q", r.Stdout)
	}

	// A directory comes out as a tar stream; names are relative to the
	// snapshot's root.
	r = e.Must("dump", "latest", src+"/sub")
	rel := strings.TrimPrefix(src, "/")
	type entry struct {
		typ  byte
		mode int64
		data string
	}
	got := map[string]entry{}
	tr := tar.NewReader(strings.NewReader(r.Stdout))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("dump of a directory is not a tar stream: %v", err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		got[h.Name] = entry{h.Typeflag, h.Mode & 0o7777, string(data)}
	}
	want := map[string]entry{
		rel + "/sub/":         {tar.TypeDir, 0o755, ""},
		rel + "/sub/small":    {tar.TypeReg, 0o600, "small file\n"},
		rel + "/sub/deep/":    {tar.TypeDir, 0o755, ""},
		rel + "/sub/deep/end": {tar.TypeReg, 0o644, "end"},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("tar of %s/sub:\n%v\nwant\n%v", src, got, want)
	}

	// The same as zip.
	r = e.Must("dump", "--archive", "zip", "latest", src+"/sub")
	zr, err := zip.NewReader(strings.NewReader(r.Stdout), int64(len(r.Stdout)))
	if err != nil {
		t.Fatalf("dump --archive zip is not a zip archive: %v", err)
	}
	gotZip := map[string]entry{}
	for _, f := range zr.File {
		rc, err := f.Open()
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			t.Fatalf("zip entry %s: %v", f.Name, err)
		}
		typ := byte(tar.TypeReg)
		if f.Mode().IsDir() {
			typ = tar.TypeDir
		}
		gotZip[f.Name] = entry{typ, int64(f.Mode().Perm()), string(data)}
	}
	if fmt.Sprint(gotZip) != fmt.Sprint(want) {
		t.Errorf("zip of %s/sub:\n%v\nwant\n%v", src, gotZip, want)
	}

	wantErrLine(t, e.Fails(1, "dump", "latest", src+"/nosuch"), "nosuch", "not found")
	wantErrLine(t, e.Fails(1, "dump", "--archive", "rar", "latest", src+"/sub"), "rar")
}

func TestKey(t *testing.T) {
	t.Parallel()
	e := NewRepo(t)
	src := filepath.Join(e.Dir, "src")
	WriteFile(t, filepath.Join(src, "f"), []byte("f"))
	e.Must("backup", src)

	first := keyList(t, e)
	if len(first) != 1 || first[0]["current"] != true {
		t.Fatalf("key list after init: %v", first)
	}
	r := e.Must("key", "list")
	if !strings.Contains(r.Stdout, fmt.Sprint(first[0]["short_id"])) {
		t.Errorf("key list table lacks %v:\n%s", first[0]["short_id"], r.Stdout)
	}

	e.Must("key", "add", "--new-password-file", writePassword(t, e.Dir, "second password"))
	keys := keyList(t, e)
	if len(keys) != 2 {
		t.Fatalf("key list after add: %v", keys)
	}
	second := *e
	second.Password = "second password"
	if n := len(second.Snapshots()); n != 1 {
		t.Errorf("the new password sees %d snapshots, want 1", n)
	}
	secondKeys := keyList(t, &second)
	var secondID string
	for _, k := range secondKeys {
		if k["current"] == true {
			secondID = fmt.Sprint(k["id"])
		}
	}
	if secondID == "" || secondID == first[0]["id"] {
		t.Fatalf("the new password opens key %q; keys %v", secondID, secondKeys)
	}

	// passwd replaces the key in use: the old password stops working.
	second.Must("key", "passwd", "--new-password-file", writePassword(t, e.Dir, "third password"))
	third := *e
	third.Password = "third password"
	wantErrLine(t, second.Fails(12, "snapshots"), "password")
	keys = keyList(t, &third)
	if len(keys) != 2 {
		t.Fatalf("key list after passwd: %v", keys)
	}
	for _, k := range keys {
		if k["id"] == secondID {
			t.Errorf("passwd kept the old key %s", secondID)
		}
	}

	// Remove the first key, opened with the third password.
	third.Must("key", "remove", fmt.Sprint(first[0]["short_id"]))
	wantErrLine(t, e.Fails(12, "snapshots"), "password")
	keys = keyList(t, &third)
	if len(keys) != 1 {
		t.Fatalf("key list after remove: %v", keys)
	}
	// The last key can not go.
	r = third.Fails(1, "key", "remove", fmt.Sprint(keys[0]["id"]))
	wantErrLine(t, r, "key")
	if n := len(third.Snapshots()); n != 1 {
		t.Errorf("after refusing to remove the last key: %d snapshots, want 1", n)
	}
	if k := repoFiles(t, e, "keys"); len(k) != 1 {
		t.Errorf("key files: %v, want one", k)
	}
	wantErrLine(t, third.Fails(1, "key", "remove", "abcdef"), "abcdef")
}

func keyList(t *testing.T, e *Env) []map[string]any {
	t.Helper()
	r := e.Must("key", "list", "--json")
	var keys []map[string]any
	if err := json.Unmarshal([]byte(r.Stdout), &keys); err != nil {
		t.Fatalf("key list --json: %v\n%s", err, r.Stdout)
	}
	return keys
}

func TestCat(t *testing.T) {
	t.Parallel()
	e := NewRepo(t)
	src := filepath.Join(e.Dir, "src")
	WriteFile(t, filepath.Join(src, "f"), randomBytes(3, 1000))
	id := backupID(t, e, src)

	var config map[string]any
	catJSON(t, e, &config, "cat", "config")
	if v := intField(t, config, "version"); v != 1 {
		t.Errorf("config version %d", v)
	}
	if s, _ := config["id"].(string); !hex64.MatchString(s) {
		t.Errorf("config id %v", config["id"])
	}

	var sn map[string]any
	catJSON(t, e, &sn, "cat", "snapshot", id[:8])
	if fmt.Sprint(sn["paths"]) != "["+src+"]" {
		t.Errorf("cat snapshot: paths %v", sn["paths"])
	}
	if s, _ := sn["tree"].(string); !hex64.MatchString(s) {
		t.Errorf("cat snapshot: tree %v", sn["tree"])
	}

	indexes := repoFiles(t, e, "index")
	packs := repoFiles(t, e, "data")
	if len(indexes) == 0 || len(packs) == 0 {
		t.Fatalf("after a backup: index files %v, packs %v", indexes, packs)
	}
	var idx struct {
		ID    string `json:"id"`
		Packs []struct {
			ID    string           `json:"id"`
			Blobs []map[string]any `json:"blobs"`
		} `json:"packs"`
	}
	catJSON(t, e, &idx, "cat", "index", indexes[0].Name[:10])
	if idx.ID != indexes[0].Name || len(idx.Packs) == 0 {
		t.Errorf("cat index: %+v", idx)
	}
	var pk struct {
		ID    string           `json:"id"`
		Blobs []map[string]any `json:"blobs"`
	}
	name := packs[0].Name
	catJSON(t, e, &pk, "cat", "pack", name)
	if pk.ID != name || len(pk.Blobs) == 0 {
		t.Errorf("cat pack: %+v", pk)
	}
	for _, b := range pk.Blobs {
		if b["type"] != "data" && b["type"] != "tree" {
			t.Errorf("cat pack: blob type %v", b["type"])
		}
	}

	unknown := strings.Repeat("0", 63) + "1"
	for _, kind := range []string{"snapshot", "index", "pack", "key"} {
		wantErrLine(t, e.Fails(1, "cat", kind, unknown[:12]), unknown[:12])
	}
	e.Fails(1, "cat", "nosuchtype", "abcd")
}

func catJSON(t *testing.T, e *Env, v any, args ...string) {
	t.Helper()
	r := e.Must(args...)
	if err := json.Unmarshal([]byte(r.Stdout), v); err != nil {
		t.Fatalf("%v: not JSON: %v\n%s", args, err, r.Stdout)
	}
}

func TestVersion(t *testing.T) {
	t.Parallel()
	e := NewEnv(t) // no repository needed
	r := e.Must("version")
	if f := strings.Fields(r.Stdout); len(f) < 2 || f[0] != "cairn" {
		t.Errorf("version: %q", r.Stdout)
	}
	var v map[string]any
	catJSON(t, e, &v, "version", "--json")
	if s, _ := v["version"].(string); s == "" {
		t.Errorf("version --json: %v", v)
	}
}

func TestSnapshotIDs(t *testing.T) {
	t.Parallel()
	e := NewRepo(t)
	src := filepath.Join(e.Dir, "src")
	WriteFile(t, filepath.Join(src, "f"), []byte("f"))
	id := backupID(t, e, src)

	for _, ref := range []string{id, id[:4], id[:8], strings.ToUpper(id[:8]), "latest"} {
		r := e.Must("ls", ref)
		if !strings.Contains(r.Stdout, src+"/f") {
			t.Errorf("ls %s: %s", ref, r.Stdout)
		}
	}
	unknown := "ffff"
	if strings.HasPrefix(id, unknown) {
		unknown = "eeee"
	}
	wantErrLine(t, e.Fails(1, "ls", unknown), "no snapshot", unknown)
	wantErrLine(t, e.Fails(1, "ls", strings.Repeat(unknown, 16)), "no snapshot")
	wantErrLine(t, e.Fails(1, "ls", "xyz!"), "xyz!")
	wantErrLine(t, e.Fails(1, "ls", id[:3]), id[:3])

	// Two snapshot files sharing a prefix: a second name for the same
	// file is enough, as the prefix is resolved before anything is read.
	twin := id[:4] + strings.Repeat("0", 60)
	if twin == id {
		twin = id[:4] + strings.Repeat("1", 60)
	}
	data := readRepoFile(t, e, repo.Handle{Type: repo.SnapshotFile, Name: id})
	writeRepoFile(t, e, repo.Handle{Type: repo.SnapshotFile, Name: twin}, data)
	wantErrLine(t, e.Fails(1, "ls", id[:4]), "ambiguous", id[:4])
	wantErrLine(t, e.Fails(1, "restore", id[:4], "--target", filepath.Join(e.Dir, "target")), "ambiguous", id[:4])
	if id[4] != twin[4] {
		e.Must("ls", id[:5])
	}
}

// --- helpers shared by the files of this package that test commands ---

// wantErrLine checks that stderr ends with one "cairn: ..." line that
// mentions each of words (case-insensitively).
func wantErrLine(t *testing.T, r Result, words ...string) {
	t.Helper()
	lines := strings.Split(strings.TrimRight(r.Stderr, "\n"), "\n")
	last := lines[len(lines)-1]
	if !strings.HasPrefix(last, "cairn: ") {
		t.Errorf("last stderr line is not a cairn error:\n%s", r)
		return
	}
	for _, w := range words {
		if !strings.Contains(strings.ToLower(last), strings.ToLower(w)) {
			t.Errorf("error line does not mention %q: %s", w, last)
		}
	}
}

// intField returns the integer m[key], failing if it is missing.
func intField(t *testing.T, m map[string]any, key string) int64 {
	t.Helper()
	v, ok := m[key].(float64)
	if !ok {
		t.Fatalf("no number %q in %v", key, m)
	}
	return int64(v)
}

// backupID backs up with --json and returns the snapshot's full id.
func backupID(t *testing.T, e *Env, args ...string) string {
	t.Helper()
	r := e.Must(append([]string{"backup", "--json"}, args...)...)
	id, _ := Summary(t, r.Stdout)["snapshot_id"].(string)
	if !hex64.MatchString(id) {
		t.Fatalf("snapshot_id %q is not 64 hex digits", id)
	}
	return id
}

func snapIDs(list []map[string]any) []string {
	var ids []string
	for _, sn := range list {
		ids = append(ids, fmt.Sprint(sn["id"]))
	}
	return ids
}

func chmod(t *testing.T, path string, mode os.FileMode) {
	t.Helper()
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

// writePassword writes pw to a new file in dir and returns its name.
func writePassword(t *testing.T, dir, pw string) string {
	t.Helper()
	f, err := os.CreateTemp(dir, "password-")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(pw + "\n"); err != nil {
		t.Fatal(err)
	}
	return f.Name()
}

// randomBytes returns n pseudo-random, incompressible bytes.
func randomBytes(seed uint64, n int) []byte {
	var s [32]byte
	s[0], s[1] = byte(seed), byte(seed>>8)
	b := make([]byte, n)
	_, _ = rand.NewChaCha8(s).Read(b)
	return b
}

// repoFile is a file of a repository and its size.
type repoFile struct {
	repo.Handle
	Size int64
}

// repoInfos lists the files of type typ in e's repository (all of them
// for ""), sorted by name, as the backend sees them: a local backend leaves
// out its temporary files. A bucket that does not exist holds no files.
func repoInfos(t *testing.T, e *Env, typ repo.FileType) []repoFile {
	t.Helper()
	types := []repo.FileType{typ}
	if typ == "" {
		types = []repo.FileType{repo.ConfigFile, repo.KeyFile, repo.PackFile, repo.IndexFile, repo.SnapshotFile, repo.LockFile}
	}
	var out []repoFile
	for _, ft := range types {
		err := e.Backend().List(context.Background(), ft, func(fi repo.FileInfo) error {
			h := repo.Handle{Type: ft, Name: fi.Name}
			if ft == repo.ConfigFile {
				h.Name = ""
			}
			out = append(out, repoFile{h, fi.Size})
			return nil
		})
		if errors.Is(err, s3.ErrNoBucket) {
			return nil
		}
		if err != nil {
			t.Fatalf("list the repository: %v", err)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].String() < out[j].String() })
	return out
}

// repoFiles lists the files of type typ in e's repository (all of them for
// ""), sorted by name.
func repoFiles(t *testing.T, e *Env, typ repo.FileType) []repo.Handle {
	t.Helper()
	var out []repo.Handle
	for _, f := range repoInfos(t, e, typ) {
		out = append(out, f.Handle)
	}
	return out
}

// repoListing is every file of the repository with its size.
func repoListing(t *testing.T, e *Env) []string {
	t.Helper()
	var out []string
	for _, f := range repoInfos(t, e, "") {
		out = append(out, fmt.Sprintf("%s %d", f, f.Size))
	}
	return out
}

// repoSize is the sum of the sizes of the repository's files.
func repoSize(t *testing.T, e *Env) int64 {
	t.Helper()
	var n int64
	for _, f := range repoInfos(t, e, "") {
		n += f.Size
	}
	return n
}

// readRepoFile returns the content of a file of e's repository.
func readRepoFile(t *testing.T, e *Env, h repo.Handle) []byte {
	t.Helper()
	data, err := repo.ReadAll(context.Background(), e.Backend(), h)
	if err != nil {
		t.Fatalf("read %s from the repository: %v", h, err)
	}
	return data
}

// writeRepoFile stores data as a file of e's repository, as cairn would.
func writeRepoFile(t *testing.T, e *Env, h repo.Handle, data []byte) {
	t.Helper()
	if err := e.Backend().Save(context.Background(), h, bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatalf("write %s to the repository: %v", h, err)
	}
}

// removeRepoFile deletes a file of e's repository.
func removeRepoFile(t *testing.T, e *Env, h repo.Handle) {
	t.Helper()
	if err := e.Backend().Remove(context.Background(), h); err != nil {
		t.Fatalf("remove %s from the repository: %v", h, err)
	}
}

// repoCreated reports whether the place of e's repository exists at all:
// its directory, or its bucket.
func repoCreated(t *testing.T, e *Env) bool {
	t.Helper()
	if !e.onS3() {
		_, err := os.Stat(e.Repo)
		if errors.Is(err, fs.ErrNotExist) {
			return false
		}
		if err != nil {
			t.Fatal(err)
		}
		return true
	}
	err := e.Backend().List(context.Background(), repo.KeyFile, func(repo.FileInfo) error { return nil })
	if errors.Is(err, s3.ErrNoBucket) {
		return false
	}
	if err != nil {
		t.Fatalf("list the repository: %v", err)
	}
	return true
}

// treeState describes every entry below root: directories, symlinks with
// their target, files with mode and a hash of their content.
func treeState(t *testing.T, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if rel == "." {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			out[rel] = fmt.Sprintf("dir %o", fi.Mode().Perm())
		case fi.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			out[rel] = "symlink " + target
		case fi.Mode().IsRegular():
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			sum := sha256.Sum256(data)
			out[rel] = fmt.Sprintf("file %o %d %s", fi.Mode().Perm(), len(data), hex.EncodeToString(sum[:8]))
		default:
			out[rel] = "other " + fi.Mode().String()
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// sameTree fails the test unless got holds what want holds.
func sameTree(t *testing.T, want, got string) {
	t.Helper()
	w, g := treeState(t, want), treeState(t, got)
	var diffs []string
	for p, ws := range w {
		if gs, ok := g[p]; !ok {
			diffs = append(diffs, "missing "+p)
		} else if gs != ws {
			diffs = append(diffs, fmt.Sprintf("%s: %s, want %s", p, gs, ws))
		}
	}
	for p := range g {
		if _, ok := w[p]; !ok {
			diffs = append(diffs, "extra "+p)
		}
	}
	sort.Strings(diffs)
	if len(diffs) > 0 {
		if len(diffs) > 20 {
			diffs = append(diffs[:20], fmt.Sprintf("... and %d more", len(diffs)-20))
		}
		t.Errorf("%s differs from %s:\n%s", got, want, strings.Join(diffs, "\n"))
	}
}

// restoredAt is where restore puts a backed-up path src under target.
func restoredAt(target, src string) string { return filepath.Join(target, src) }
