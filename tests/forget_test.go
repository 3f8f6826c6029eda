package tests

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cairn-backup/cairn/repo"
	"golang.org/x/crypto/poly1305"
	"golang.org/x/crypto/scrypt"
)

// The tests in this file cover "cairn forget" (cli.md): retention policies
// checked against an oracle written from restic's documented rules and
// against restic itself, explicit ids, --dry-run and the refusal to run
// without a policy.

// forgetTZ is the zone every snapshot time is read and bucketed in: it has
// summer time, so days of 23 and 25 hours.
const forgetTZ = "Europe/Berlin"

func forgetLocation(t *testing.T) *time.Location {
	t.Helper()
	loc, err := time.LoadLocation(forgetTZ)
	if err != nil {
		t.Skipf("no time zone data for %s: %v", forgetTZ, err)
	}
	return loc
}

// forgetSnap is one snapshot of the fixture, as given to backup.
type forgetSnap struct {
	when time.Time
	host string
	tags []string
}

func (s forgetSnap) timeArg(loc *time.Location) string {
	return s.when.In(loc).Format("2006-01-02 15:04:05")
}

// forgetFixtureSnaps returns about 150 snapshots at irregular times from
// mid-2022 to early 2025: gaps of weeks, of days, of hours and of minutes,
// plus times that sit on the edges buckets are most easily got wrong at
// (midnight, summer time changes, ISO weeks that cross a new year). Each
// host's oldest snapshot shares its hour with another, so that the
// oldest-snapshot rule keeps a snapshot no other rule would.
func forgetFixtureSnaps(t *testing.T, loc *time.Location) []forgetSnap {
	t.Helper()
	rng := mrand.New(mrand.NewPCG(2022, 7))
	randomSnap := func(at time.Time) forgetSnap {
		s := forgetSnap{when: at.Truncate(time.Second), host: "alpha"}
		if rng.IntN(100) < 15 {
			s.host = "beta"
		}
		switch p := rng.IntN(100); {
		case p < 20:
			s.tags = []string{"a"}
		case p < 30:
			s.tags = []string{"a", "b"}
		case p < 35:
			s.tags = []string{"b"}
		}
		return s
	}
	var snaps []forgetSnap
	const hour, day = 3600, 86400
	end := time.Date(2025, 1, 5, 0, 0, 0, 0, loc)
	for at := time.Date(2022, 7, 1, 9, 0, 0, 0, loc); ; {
		var step int
		switch p := rng.IntN(100); {
		case p < 15:
			step = 25*day + rng.IntN(35*day)
		case p < 50:
			step = 3*day + rng.IntN(10*day)
		case p < 85:
			step = 2*hour + rng.IntN(28*hour)
		default:
			step = 300 + rng.IntN(50*60)
		}
		at = at.Add(time.Duration(step) * time.Second)
		if at.After(end) {
			break
		}
		snaps = append(snaps, randomSnap(at))
	}
	for _, special := range []struct{ at, host string }{
		{"2022-06-20 08:10:00", "alpha"},
		{"2022-06-20 08:50:00", "alpha"},
		{"2022-06-21 07:00:00", "beta"},
		{"2022-06-21 07:30:00", "beta"},
		{"2022-12-31 12:00:00", ""}, // Saturday, 2022-W52
		{"2023-01-01 23:30:00", ""}, // Sunday, still 2022-W52
		{"2023-01-02 00:30:00", ""}, // Monday, 2023-W01; 23:30 UTC the day before
		{"2023-03-26 01:30:00", ""}, // summer time starts at 02:00
		{"2023-03-26 03:30:00", ""},
		{"2023-05-31 23:50:00", ""}, // a month ends; 21:50 UTC
		{"2023-06-01 00:10:00", ""}, // still May 31 in UTC
		{"2023-07-14 23:45:00", ""},
		{"2023-07-15 00:15:00", ""},
		{"2023-10-29 01:30:00", ""}, // summer time ends at 03:00
		{"2023-10-29 03:30:00", ""},
		{"2023-12-31 23:20:00", ""}, // a year ends
		{"2024-01-01 00:40:00", ""}, // still 2023 in UTC
		{"2024-03-31 00:30:00", ""},
		{"2024-03-31 23:30:00", ""}, // a 23-hour day
		{"2024-12-29 18:00:00", ""}, // Sunday, 2024-W52
		{"2024-12-30 08:00:00", ""}, // Monday, 2025-W01
		{"2024-12-31 23:59:00", ""},
		{"2025-01-01 00:01:00", ""},
	} {
		at, err := time.ParseInLocation("2006-01-02 15:04:05", special.at, loc)
		if err != nil {
			t.Fatal(err)
		}
		s := randomSnap(at)
		if special.host != "" {
			s.host = special.host
		}
		snaps = append(snaps, s)
	}
	slices.SortFunc(snaps, func(a, b forgetSnap) int { return a.when.Compare(b.when) })
	// Times are the identity of a snapshot across the two tools: no two
	// may share a second.
	snaps = slices.CompactFunc(snaps, func(a, b forgetSnap) bool { return a.when.Equal(b.when) })
	// The hour that happens twice when summer time ends cannot be given
	// unambiguously as a local time: leave it out.
	snaps = slices.DeleteFunc(snaps, func(s forgetSnap) bool {
		local := s.when.In(loc)
		return local.Month() == time.October && local.Weekday() == time.Sunday && local.Day() >= 25 && local.Hour() == 2
	})
	if len(snaps) < 120 || len(snaps) > 180 {
		t.Fatalf("the fixture has %d snapshots, want about 150", len(snaps))
	}
	return snaps
}

// forgetRules is a policy as the oracle reads it. Counts: 0 unused, -1 all.
type forgetRules struct {
	last, hourly, daily, weekly, monthly, yearly int
	within                                       [4]int // years, months, days, hours
	tags                                         [][]string
	byHost, byTags                               bool
	host                                         string // a --host filter
}

// forgetGroupName names a group by the fields it is grouped by; every
// snapshot of the fixture has the same path, so paths need no name.
func forgetGroupName(byHost bool, host string, byTags bool, tags []string) string {
	if !byHost {
		host = "*"
	}
	tagName := "*"
	if byTags {
		tagName = strings.Join(slices.Sorted(slices.Values(tags)), ",")
	}
	return "host=" + host + " tags=" + tagName
}

// forgetOracle computes the times kept in each group from restic's
// documentation: within each group, newest first, a snapshot is kept if
// it has all tags of a --keep-tag list, or is newer than the newest minus
// --keep-within, or is the newest of one of the newest N hours, days, ISO
// weeks, months or years (local time) that have snapshots, or one of the
// N newest. With oldest set (restic 0.16 and later), a rule that finds
// fewer than N such periods, or has no limit, keeps the oldest snapshot too.
func forgetOracle(snaps []forgetSnap, r forgetRules, loc *time.Location, oldest bool) map[string][]int64 {
	groups := map[string][]forgetSnap{}
	for _, s := range snaps {
		if r.host != "" && s.host != r.host {
			continue
		}
		name := forgetGroupName(r.byHost, s.host, r.byTags, s.tags)
		groups[name] = append(groups[name], s)
	}
	out := map[string][]int64{}
	for name, g := range groups {
		slices.SortFunc(g, func(a, b forgetSnap) int { return b.when.Compare(a.when) })
		keep := make([]bool, len(g))
		newest := g[0].when.In(loc)
		cutoff := newest.AddDate(-r.within[0], -r.within[1], -r.within[2]).Add(-time.Duration(r.within[3]) * time.Hour)
		for i, s := range g {
			for _, list := range r.tags {
				all := true
				for _, tag := range list {
					all = all && slices.Contains(s.tags, tag)
				}
				keep[i] = keep[i] || all
			}
			if r.within != [4]int{} && s.when.After(cutoff) {
				keep[i] = true
			}
		}
		periods := []struct {
			n      int
			period func(i int, t time.Time) string
		}{
			{r.last, func(i int, _ time.Time) string { return fmt.Sprint(i) }},
			{r.hourly, func(_ int, t time.Time) string { return t.Format("2006-01-02 15") }},
			{r.daily, func(_ int, t time.Time) string { return t.Format("2006-01-02") }},
			{r.weekly, func(_ int, t time.Time) string { y, w := t.ISOWeek(); return fmt.Sprintf("%d-W%02d", y, w) }},
			{r.monthly, func(_ int, t time.Time) string { return t.Format("2006-01") }},
			{r.yearly, func(_ int, t time.Time) string { return t.Format("2006") }},
		}
		for _, p := range periods {
			if p.n == 0 {
				continue
			}
			var seen []string
			var newestOf []int // the first seen, newest first, is the newest
			for i, s := range g {
				if k := p.period(i, s.when.In(loc)); !slices.Contains(seen, k) {
					seen = append(seen, k)
					newestOf = append(newestOf, i)
				}
			}
			n := len(seen)
			if p.n > 0 && p.n < n {
				n = p.n
			}
			for _, i := range newestOf[:n] {
				keep[i] = true
			}
			if oldest && (p.n < 0 || len(seen) < p.n) {
				keep[len(g)-1] = true
			}
		}
		var kept []int64
		for i, s := range g {
			if keep[i] {
				kept = append(kept, s.when.Unix())
			}
		}
		slices.Sort(kept)
		out[name] = kept
	}
	return out
}

// forgetJSONSnap is the part of a snapshot in forget --json that the tests
// read; restic's output has the same keys.
type forgetJSONSnap struct {
	ID       string   `json:"id"`
	Time     string   `json:"time"`
	Hostname string   `json:"hostname"`
	Tags     []string `json:"tags"`
}

func (s forgetJSONSnap) unix(t *testing.T) int64 {
	t.Helper()
	at, err := time.Parse(time.RFC3339Nano, s.Time)
	if err != nil {
		t.Fatalf("snapshot %s: time %q: %v", s.ID, s.Time, err)
	}
	return at.Unix()
}

type forgetJSONGroup struct {
	GroupKey map[string]any   `json:"group_key"`
	Keep     []forgetJSONSnap `json:"keep"`
	Remove   []forgetJSONSnap `json:"remove"`
	Reasons  []struct {
		Snapshot forgetJSONSnap `json:"snapshot"`
		Matches  []string       `json:"matches"`
	} `json:"reasons"`
	// restic 0.14's group fields
	Host string   `json:"host"`
	Tags []string `json:"tags"`
}

func decodeForget(t *testing.T, tool, stdout string) []forgetJSONGroup {
	t.Helper()
	var groups []forgetJSONGroup
	if err := json.Unmarshal([]byte(stdout), &groups); err != nil {
		t.Fatalf("%s forget --json: %v\n%s", tool, err, stdout)
	}
	return groups
}

// cairnKept checks the shape of cairn's forget --json and returns the
// times kept per group, and the reasons given per time.
func cairnKept(t *testing.T, stdout string) (map[string][]int64, map[int64][]string) {
	t.Helper()
	for _, null := range []string{`"keep":null`, `"remove":null`, `"reasons":null`, `"matches":null`} {
		if strings.Contains(stdout, null) {
			t.Errorf("forget --json has %s", null)
		}
	}
	kept := map[string][]int64{}
	reasons := map[int64][]string{}
	for _, g := range decodeForget(t, "cairn", stdout) {
		_, byHost := g.GroupKey["host"]
		_, byTags := g.GroupKey["tags"]
		host, _ := g.GroupKey["host"].(string)
		var tags []string
		if list, ok := g.GroupKey["tags"].([]any); ok {
			for _, tag := range list {
				tags = append(tags, fmt.Sprint(tag))
			}
		}
		name := forgetGroupName(byHost, host, byTags, tags)
		if _, dup := kept[name]; dup {
			t.Errorf("group %s appears twice", name)
		}
		if len(g.Reasons) != len(g.Keep) {
			t.Errorf("group %s: %d kept, %d reasons", name, len(g.Keep), len(g.Reasons))
		}
		times := []int64{}
		for i, sn := range g.Keep {
			times = append(times, sn.unix(t))
			if i < len(g.Reasons) {
				r := g.Reasons[i]
				if r.Snapshot.ID != sn.ID || len(r.Matches) == 0 {
					t.Errorf("group %s: reason %d is %+v for snapshot %s", name, i, r, sn.ID)
				}
				reasons[sn.unix(t)] = r.Matches
			}
		}
		slices.Sort(times)
		kept[name] = times
	}
	return kept, reasons
}

// resticKept returns the times restic keeps per group.
func resticKept(t *testing.T, stdout string, r forgetRules) map[string][]int64 {
	t.Helper()
	kept := map[string][]int64{}
	for _, g := range decodeForget(t, "restic", stdout) {
		name := forgetGroupName(r.byHost, g.Host, r.byTags, g.Tags)
		times := []int64{}
		for _, sn := range g.Keep {
			times = append(times, sn.unix(t))
		}
		slices.Sort(times)
		kept[name] = times
	}
	return kept
}

// diffKept describes how got differs from want, "" if not at all.
func diffKept(got, want map[string][]int64, loc *time.Location) string {
	var b strings.Builder
	names := slices.Sorted(func(yield func(string) bool) {
		for n := range want {
			if !yield(n) {
				return
			}
		}
		for n := range got {
			if _, ok := want[n]; !ok && !yield(n) {
				return
			}
		}
	})
	show := func(ts []int64) string {
		var s []string
		for _, u := range ts {
			s = append(s, time.Unix(u, 0).In(loc).Format("2006-01-02 15:04:05"))
		}
		return "[" + strings.Join(s, ", ") + "]"
	}
	for _, n := range names {
		g, gok := got[n]
		w, wok := want[n]
		switch {
		case !gok:
			fmt.Fprintf(&b, "\n  group %s missing", n)
		case !wok:
			fmt.Fprintf(&b, "\n  group %s not expected", n)
		case !slices.Equal(g, w):
			var extra, missing []int64
			for _, u := range g {
				if !slices.Contains(w, u) {
					extra = append(extra, u)
				}
			}
			for _, u := range w {
				if !slices.Contains(g, u) {
					missing = append(missing, u)
				}
			}
			fmt.Fprintf(&b, "\n  group %s: kept %d, want %d; kept but should not be %s; not kept %s",
				n, len(g), len(w), show(extra), show(missing))
		}
	}
	return b.String()
}

// resticRepo is a restic repository for comparisons, with the restic
// installed on the machine.
type resticRepo struct {
	bin, dir string
	env      []string
}

const resticPassword = "restic-oracle"

// resticBinary returns the restic to compare with, or "" when it is not
// installed (a failure in CI).
func resticBinary(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("restic")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("restic is needed for the comparison: %v", err)
		}
		t.Logf("restic not installed: comparing with the oracle only")
		return ""
	}
	return bin
}

// initResticRepo initialises a restic repository in dir, with a key that
// is quick to open.
func initResticRepo(bin, dir string) (*resticRepo, error) {
	r := &resticRepo{bin: bin, dir: dir, env: append(os.Environ(),
		"RESTIC_REPOSITORY="+filepath.Join(dir, "repo"),
		"RESTIC_PASSWORD="+resticPassword,
		"RESTIC_CACHE_DIR="+filepath.Join(dir, "cache"),
		"TZ="+forgetTZ,
	)}
	if _, err := r.run("init"); err != nil {
		return nil, err
	}
	mk, err := r.run("cat", "masterkey")
	if err != nil {
		return nil, err
	}
	if err := writeFastResticKey(filepath.Join(dir, "repo"), resticPassword, mk); err != nil {
		return nil, fmt.Errorf("rewrite the restic key: %w", err)
	}
	return r, nil
}

func (r *resticRepo) run(args ...string) ([]byte, error) {
	cmd := exec.Command(r.bin, args...)
	cmd.Env = r.env
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("restic %s: %w: %s", strings.Join(args, " "), err, stderr.String())
	}
	return out, nil
}

// writeFastResticKey replaces the key of a restic repository by one with
// cheap scrypt parameters, so that each of the many restic commands does
// not spend half a second deriving its key. The format is restic's
// documented one (design.rst, "Keys, Encryption and MAC"): the key file
// holds the scrypt parameters and the master key sealed with the derived
// key: IV, AES-256-CTR ciphertext, then a Poly1305-AES MAC of the
// ciphertext.
func writeFastResticKey(repoDir, password string, masterKey []byte) error {
	const n, r, p = 1024, 8, 1
	salt := make([]byte, 64)
	iv := make([]byte, 16)
	rand.Read(salt)
	rand.Read(iv)
	// 32 bytes of AES key, then the MAC key: 16 bytes k, 16 bytes r.
	derived, err := scrypt.Key([]byte(password), salt, n, r, p, 64)
	if err != nil {
		return err
	}
	block, err := aes.NewCipher(derived[:32])
	if err != nil {
		return err
	}
	ciphertext := make([]byte, len(masterKey))
	cipher.NewCTR(block, iv).XORKeyStream(ciphertext, masterKey)
	macBlock, err := aes.NewCipher(derived[32:48])
	if err != nil {
		return err
	}
	var macKey [32]byte // r, then AES_k(IV)
	copy(macKey[:16], derived[48:64])
	macBlock.Encrypt(macKey[16:], iv)
	var mac [16]byte
	poly1305.Sum(&mac, ciphertext, &macKey)
	file, err := json.Marshal(map[string]any{
		"created": time.Now(), "username": "test", "hostname": "test",
		"kdf": "scrypt", "N": n, "r": r, "p": p, "salt": salt,
		"data": slices.Concat(iv, ciphertext, mac[:]),
	})
	if err != nil {
		return err
	}
	old, err := filepath.Glob(filepath.Join(repoDir, "keys", "*"))
	if err != nil || len(old) != 1 {
		return fmt.Errorf("keys %v (%v): want one", old, err)
	}
	sum := sha256.Sum256(file)
	if err := os.WriteFile(filepath.Join(repoDir, "keys", hex.EncodeToString(sum[:])), file, 0o600); err != nil {
		return err
	}
	return os.Remove(old[0])
}

// makeResticFixture makes the fixture's snapshots with "restic backup
// --time" and returns the repository that holds them all. Most of a
// restic backup of a tiny directory is a pause after taking the lock, and
// restic 0.14 run in parallel on one repository can stall for seconds
// loading a lock another process has just removed: so three repositories
// take a third each, and "restic copy" gathers them in the first.
func makeResticFixture(bin, dir string, snaps []forgetSnap, src string, loc *time.Location) (*resticRepo, error) {
	const shards = 3
	repos := make([]*resticRepo, shards)
	errs := make([]error, shards)
	done := make(chan int)
	for i := range shards {
		go func() {
			defer func() { done <- i }()
			r, err := initResticRepo(bin, filepath.Join(dir, fmt.Sprint(i)))
			if err != nil {
				errs[i] = err
				return
			}
			repos[i] = r
			for j := i; j < len(snaps); j += shards {
				s := snaps[j]
				args := []string{"backup", "-q", "--host", s.host, "--time", s.timeArg(loc)}
				for _, tag := range s.tags {
					args = append(args, "--tag", tag)
				}
				if _, err := r.run(append(args, src)...); err != nil {
					errs[i] = err
					return
				}
			}
		}()
	}
	for range shards {
		<-done
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	pwFile := filepath.Join(dir, "password")
	if err := os.WriteFile(pwFile, []byte(resticPassword), 0o600); err != nil {
		return nil, err
	}
	for _, from := range repos[1:] {
		if _, err := repos[0].run("copy", "-q", "--from-repo", filepath.Join(from.dir, "repo"), "--from-password-file", pwFile); err != nil {
			return nil, err
		}
	}
	return repos[0], nil
}

// TestForgetPolicies creates the same ~150 snapshots with cairn and with
// restic, and checks each policy's kept set three ways: cairn against the
// oracle, restic 0.14 against the oracle without the oldest-snapshot rule
// (restic 0.14 lacks it), and so cairn against restic wherever that rule
// changes nothing.
func TestForgetPolicies(t *testing.T) {
	t.Parallel()
	loc := forgetLocation(t)
	snaps := forgetFixtureSnaps(t, loc)

	e := NewRepo(t)
	e.Extra = append(e.Extra, "TZ="+forgetTZ)
	src := filepath.Join(e.Dir, "src")
	WriteFile(t, filepath.Join(src, "file"), []byte("forget me not\n"))

	start := time.Now()
	var rr *resticRepo
	var resticErr error
	var resticTook time.Duration
	resticDone := make(chan struct{})
	if bin := resticBinary(t); bin != "" {
		dir := t.TempDir()
		go func() {
			defer close(resticDone)
			rr, resticErr = makeResticFixture(bin, dir, snaps, src, loc)
			resticTook = time.Since(start)
		}()
	} else {
		close(resticDone)
	}
	for _, s := range snaps {
		args := []string{"backup", "-q", "--host", s.host, "--time", s.timeArg(loc)}
		for _, tag := range s.tags {
			args = append(args, "--tag", tag)
		}
		e.Must(append(args, src)...)
	}
	cairnTook := time.Since(start)
	<-resticDone
	if resticErr != nil {
		t.Fatal(resticErr)
	}
	if rr != nil {
		out, err := rr.run("--no-lock", "snapshots", "--json")
		if err != nil {
			t.Fatal(err)
		}
		var list []forgetJSONSnap
		if err := json.Unmarshal(out, &list); err != nil || len(list) != len(snaps) {
			t.Fatalf("restic has %d snapshots (%v), want %d", len(list), err, len(snaps))
		}
	}
	t.Logf("%d snapshots made: cairn %s, restic %s", len(snaps), cairnTook.Round(time.Millisecond), resticTook.Round(time.Millisecond))
	if got := e.Snapshots(); len(got) != len(snaps) {
		t.Fatalf("cairn has %d snapshots, want %d", len(got), len(snaps))
	}

	cases := []struct {
		name string
		args []string
		r    forgetRules
		// restic 0.14 reads -1 as "none": compare only with the oracle.
		noRestic bool
	}{
		{"last", []string{"--keep-last", "7"}, forgetRules{last: 7, byHost: true}, false},
		{"hourly", []string{"--keep-hourly", "20"}, forgetRules{hourly: 20, byHost: true}, false},
		{"daily", []string{"--keep-daily", "10"}, forgetRules{daily: 10, byHost: true}, false},
		{"weekly", []string{"--keep-weekly", "12"}, forgetRules{weekly: 12, byHost: true}, false},
		{"monthly", []string{"--keep-monthly", "18"}, forgetRules{monthly: 18, byHost: true}, false},
		{"yearly", []string{"--keep-yearly", "5"}, forgetRules{yearly: 5, byHost: true}, false},
		{"usual mix", []string{"--keep-daily", "7", "--keep-weekly", "5", "--keep-monthly", "12", "--keep-yearly", "3"},
			forgetRules{daily: 7, weekly: 5, monthly: 12, yearly: 3, byHost: true}, false},
		{"within", []string{"--keep-within", "3m10d"}, forgetRules{within: [4]int{0, 3, 10, 0}, byHost: true}, false},
		{"within and last", []string{"--keep-within", "1y2m3d4h", "--keep-last", "3"},
			forgetRules{within: [4]int{1, 2, 3, 4}, last: 3, byHost: true}, false},
		{"daily unlimited", []string{"--keep-daily", "-1"}, forgetRules{daily: -1, byHost: true}, true},
		{"monthly unlimited and tag", []string{"--keep-monthly", "unlimited", "--keep-tag", "b"},
			forgetRules{monthly: -1, tags: [][]string{{"b"}}, byHost: true}, true},
		{"tags and weekly", []string{"--keep-tag", "a,b", "--keep-weekly", "4"},
			forgetRules{tags: [][]string{{"a", "b"}}, weekly: 4, byHost: true}, false},
		{"two tag lists", []string{"--keep-tag", "b", "--keep-tag", "a", "--keep-yearly", "1"},
			forgetRules{tags: [][]string{{"b"}, {"a"}}, yearly: 1, byHost: true}, false},
		{"one group", []string{"--keep-weekly", "30", "--group-by", ""}, forgetRules{weekly: 30}, false},
		{"by host and tags", []string{"--keep-monthly", "3", "--group-by", "host,tags"},
			forgetRules{monthly: 3, byHost: true, byTags: true}, false},
		{"by tags", []string{"--keep-last", "2", "--keep-daily", "3", "--group-by", "tags"},
			forgetRules{last: 2, daily: 3, byTags: true}, false},
		{"host filter", []string{"--keep-hourly", "10", "--keep-monthly", "30", "--host", "beta"},
			forgetRules{hourly: 10, monthly: 30, byHost: true, host: "beta"}, false},
	}
	oldestFired := 0
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := e.Must(append([]string{"forget", "--dry-run", "--json"}, c.args...)...)
			got, reasons := cairnKept(t, r.Stdout)
			want := forgetOracle(snaps, c.r, loc, true)
			if d := diffKept(got, want, loc); d != "" {
				t.Errorf("cairn forget %s differs from the oracle:%s", strings.Join(c.args, " "), d)
			}
			before014 := forgetOracle(snaps, c.r, loc, false)
			// The snapshots only the oldest-snapshot rule keeps must say so.
			for name, times := range want {
				for _, u := range times {
					if slices.Contains(before014[name], u) {
						continue
					}
					if !slices.ContainsFunc(reasons[u], func(m string) bool { return strings.HasPrefix(m, "oldest ") }) {
						t.Errorf("group %s: %s kept for %q, want an \"oldest ...\" reason",
							name, time.Unix(u, 0).In(loc), reasons[u])
					}
				}
			}
			if diffKept(want, before014, loc) != "" {
				oldestFired++
			}
			if rr == nil || c.noRestic {
				return
			}
			out, err := rr.run(append([]string{"forget", "--dry-run", "--json"}, c.args...)...)
			if err != nil {
				t.Fatal(err)
			}
			restic := resticKept(t, string(out), c.r)
			if d := diffKept(restic, before014, loc); d != "" {
				t.Errorf("restic forget %s differs from the oracle without the oldest-snapshot rule:%s", strings.Join(c.args, " "), d)
			}
			for name, w := range want {
				if slices.Equal(w, before014[name]) && !slices.Equal(got[name], restic[name]) {
					t.Errorf("group %s: cairn and restic keep different snapshots:%s", name,
						diffKept(map[string][]int64{name: got[name]}, map[string][]int64{name: restic[name]}, loc))
				}
			}
		})
	}
	t.Logf("the oldest-snapshot rule changed the outcome of %d of %d policies", oldestFired, len(cases))
	if oldestFired < 3 {
		t.Errorf("the oldest-snapshot rule changed the outcome of %d policies: the fixture does not test it", oldestFired)
	}
	if got := e.Snapshots(); len(got) != len(snaps) {
		t.Errorf("after dry runs: %d snapshots, want all %d", len(got), len(snaps))
	}
}

// forgetSmallRepo makes a repository with one snapshot at each of times
// (local times in forgetTZ) and returns it with the snapshot ids by time.
func forgetSmallRepo(t *testing.T, times ...string) (*Env, map[string]string) {
	t.Helper()
	e := NewRepo(t)
	e.Extra = append(e.Extra, "TZ="+forgetTZ)
	src := filepath.Join(e.Dir, "src")
	WriteFile(t, filepath.Join(src, "file"), []byte("data\n"))
	ids := map[string]string{}
	for _, at := range times {
		r := e.Must("backup", "--json", "--time", at, src)
		id, _ := Summary(t, r.Stdout)["snapshot_id"].(string)
		if len(id) != 64 {
			t.Fatalf("backup --json: snapshot_id %q", id)
		}
		ids[at] = id
	}
	return e, ids
}

// listedIDs returns the ids "snapshots --json" lists, sorted.
func listedIDs(e *Env) []string {
	var ids []string
	for _, sn := range e.Snapshots() {
		ids = append(ids, fmt.Sprint(sn["id"]))
	}
	slices.Sort(ids)
	return ids
}

func idsOf(ids map[string]string, times ...string) []string {
	var out []string
	for _, at := range times {
		out = append(out, ids[at])
	}
	slices.Sort(out)
	return out
}

func TestForgetRefusesWithoutPolicy(t *testing.T) {
	t.Parallel()
	forgetLocation(t)
	e, ids := forgetSmallRepo(t, "2024-01-01 10:00:00", "2024-01-02 10:00:00")
	all := idsOf(ids, "2024-01-01 10:00:00", "2024-01-02 10:00:00")
	for _, args := range [][]string{
		{"forget"},
		{"forget", "--dry-run"},
		{"forget", "--host", "somewhere"},
		{"forget", "--group-by", "host", "--json"},
		{"forget", "--keep-within", "0d"},
	} {
		r := e.Fails(1, args...)
		if lines := strings.Split(strings.TrimSpace(r.Stderr), "\n"); len(lines) != 1 || !strings.Contains(lines[0], "policy") {
			t.Errorf("%v: want one line about the missing policy:\n%s", args, r)
		}
		if r.Stdout != "" {
			t.Errorf("%v printed on stdout:\n%s", args, r.Stdout)
		}
	}
	for _, args := range [][]string{
		{"forget", "--keep-last", "-2"},
		{"forget", "--keep-daily", "many"},
		{"forget", "--keep-within", "3w"},
		{"forget", "--keep-within", "-1d"},
		{"forget", "--keep-last", "1", "--group-by", "hostname"},
		{"forget", "--keep-last", "1", ids["2024-01-01 10:00:00"]},
		{"forget", ids["2024-01-01 10:00:00"], "--host", "x"},
	} {
		r := e.Fails(1, args...)
		if lines := strings.Split(strings.TrimSpace(r.Stderr), "\n"); len(lines) != 1 {
			t.Errorf("%v: want a one-line error:\n%s", args, r)
		}
	}
	if got := listedIDs(e); !slices.Equal(got, all) {
		t.Errorf("refused commands removed snapshots: %v left, want %v", got, all)
	}
}

func TestForgetIDs(t *testing.T) {
	t.Parallel()
	forgetLocation(t)
	times := []string{"2024-01-01 10:00:00", "2024-01-02 10:00:00", "2024-01-03 10:00:00", "2024-01-04 10:00:00"}
	e, ids := forgetSmallRepo(t, times...)
	first, third := ids[times[0]], ids[times[2]]

	// An unknown id among good ones: nothing is removed.
	e.Fails(1, "forget", first[:8], "00000000")
	if got := listedIDs(e); !slices.Equal(got, idsOf(ids, times...)) {
		t.Fatalf("a failed forget removed snapshots: %v left", got)
	}

	r := e.Must("forget", "--dry-run", first[:8])
	if !strings.Contains(r.Stdout, first[:8]) {
		t.Errorf("forget --dry-run does not name the snapshot:\n%s", r)
	}
	if got := listedIDs(e); !slices.Equal(got, idsOf(ids, times...)) {
		t.Fatalf("forget --dry-run removed snapshots: %v left", got)
	}

	// A prefix and the full id of another; one named twice counts once.
	r = e.Must("forget", "--json", first[:6], third, third[:10])
	groups := decodeForget(t, "cairn", r.Stdout)
	var removed []string
	for _, g := range groups {
		if len(g.Keep) != 0 {
			t.Errorf("forget of ids keeps %v", g.Keep)
		}
		for _, sn := range g.Remove {
			removed = append(removed, sn.ID)
		}
	}
	slices.Sort(removed)
	if want := idsOf(ids, times[0], times[2]); !slices.Equal(removed, want) {
		t.Errorf("forget --json reports %v removed, want %v", removed, want)
	}
	if got, want := listedIDs(e), idsOf(ids, times[1], times[3]); !slices.Equal(got, want) {
		t.Errorf("after forget of two ids: %v left, want %v", got, want)
	}
	e.Fails(1, "forget", first)
}

func TestForgetPolicyRemoves(t *testing.T) {
	t.Parallel()
	forgetLocation(t)
	times := []string{
		"2024-01-05 10:00:00", "2024-01-20 10:00:00",
		"2024-02-03 10:00:00", "2024-02-10 10:00:00", "2024-02-28 10:00:00",
		"2024-03-01 10:00:00", "2024-03-02 10:00:00", "2024-03-03 10:00:00",
	}
	e, ids := forgetSmallRepo(t, times...)
	all := idsOf(ids, times...)

	// Three months for five: the newest of each, and the oldest snapshot.
	wantKept := idsOf(ids, "2024-03-03 10:00:00", "2024-02-28 10:00:00", "2024-01-20 10:00:00", "2024-01-05 10:00:00")
	r := e.Must("forget", "--dry-run", "--keep-monthly", "5")
	for _, id := range all {
		if !strings.Contains(r.Stdout, id[:8]) {
			t.Errorf("forget --dry-run does not list %s:\n%s", id[:8], r.Stdout)
		}
	}
	if !strings.Contains(r.Stdout, "oldest monthly snapshot") || !strings.Contains(r.Stdout, "would remove 4 snapshots") {
		t.Errorf("forget --dry-run output lacks the reasons or the count:\n%s", r.Stdout)
	}
	if got := listedIDs(e); !slices.Equal(got, all) {
		t.Fatalf("forget --dry-run removed snapshots: %v left", got)
	}

	r = e.Must("forget", "--json", "--keep-monthly", "5")
	groups := decodeForget(t, "cairn", r.Stdout)
	if len(groups) != 1 {
		t.Fatalf("forget --json: %d groups, want 1:\n%s", len(groups), r.Stdout)
	}
	g := groups[0]
	for _, key := range []string{"host", "cluster", "component", "paths"} {
		if _, ok := g.GroupKey[key]; !ok {
			t.Errorf("group_key lacks %s: %v", key, g.GroupKey)
		}
	}
	var kept, removed []string
	for _, sn := range g.Keep {
		kept = append(kept, sn.ID)
	}
	for _, sn := range g.Remove {
		removed = append(removed, sn.ID)
	}
	slices.Sort(kept)
	if !slices.Equal(kept, wantKept) || len(removed) != 4 {
		t.Errorf("forget --json kept %v and removed %v; want %v kept", kept, removed, wantKept)
	}
	oldest := ids["2024-01-05 10:00:00"]
	for _, reason := range g.Reasons {
		if reason.Snapshot.ID == oldest && !slices.Equal(reason.Matches, []string{"oldest monthly snapshot"}) {
			t.Errorf("the oldest snapshot is kept for %q", reason.Matches)
		}
	}
	if got := listedIDs(e); !slices.Equal(got, wantKept) {
		t.Errorf("snapshots after forget: %v, want %v", got, wantKept)
	}

	// Nothing more to remove: the same policy again keeps everything.
	r = e.Must("forget", "--keep-monthly", "5")
	if !strings.Contains(r.Stdout, "removed 0 snapshots") {
		t.Errorf("a second forget:\n%s", r.Stdout)
	}
	if got := listedIDs(e); !slices.Equal(got, wantKept) {
		t.Errorf("snapshots after a second forget: %v, want %v", got, wantKept)
	}
}

// Removing snapshots waits for no backup to be running: forget needs the
// exclusive lock, while a dry run shares it.
func TestForgetLock(t *testing.T) {
	t.Parallel()
	forgetLocation(t)
	e, ids := forgetSmallRepo(t, "2024-01-01 10:00:00", "2024-01-02 10:00:00")
	host, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	r := e.OpenRepo()
	ctx := context.Background()
	// This test process is alive, so its lock is not stale.
	lockID, err := r.SaveJSON(ctx, repo.LockFile, &repo.Lock{Time: time.Now(), Hostname: host, Username: "test", PID: os.Getpid()})
	if err != nil {
		t.Fatal(err)
	}
	e.Must("forget", "--dry-run", "--keep-last", "1")
	e.Fails(11, "forget", "--keep-last", "1")
	e.Fails(11, "forget", ids["2024-01-01 10:00:00"])
	if got := listedIDs(e); len(got) != 2 {
		t.Fatalf("forget under a lock removed snapshots: %v left", got)
	}
	if err := r.RemoveFile(ctx, repo.LockFile, lockID); err != nil {
		t.Fatal(err)
	}
	e.Must("forget", "--keep-last", "1")
	if got, want := listedIDs(e), idsOf(ids, "2024-01-02 10:00:00"); !slices.Equal(got, want) {
		t.Errorf("after forget --keep-last 1: %v, want %v", got, want)
	}
}

// TestForgetPrune: forget --prune removes the snapshots and then the data
// only they referenced, under one lock; what is kept still restores.
func TestForgetPrune(t *testing.T) {
	e := NewRepo(t)
	src := filepath.Join(e.Dir, "src")
	var want [][]byte
	for i := range 3 {
		data := make([]byte, 3<<20)
		_, _ = mrand.NewChaCha8([32]byte{byte(i + 1)}).Read(data)
		WriteFile(t, filepath.Join(src, "f"), data)
		want = append(want, data)
		e.Must("backup", "--time", fmt.Sprintf("2024-01-0%d 10:00:00", i+1), src)
	}
	before := repoSize(t, e)
	e.Must("forget", "--keep-last", "1", "--prune")
	if n := len(e.Snapshots()); n != 1 {
		t.Fatalf("%d snapshots after forget --keep-last 1 --prune", n)
	}
	if after := repoSize(t, e); after >= before*2/3 {
		t.Errorf("repository %d bytes after forgetting 2 of 3 versions and pruning, %d before", after, before)
	}
	target := filepath.Join(e.Dir, "target")
	e.Must("restore", "latest", "--target", target)
	got, err := os.ReadFile(filepath.Join(target, src, "f"))
	if err != nil || !bytes.Equal(got, want[2]) {
		t.Fatalf("restore after forget --prune: %v (equal: %v)", err, bytes.Equal(got, want[2]))
	}
}
