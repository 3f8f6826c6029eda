package snapshot_test

import (
	"encoding/binary"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cairn-backup/cairn/repo"
	"github.com/cairn-backup/cairn/snapshot"
)

// berlin is the zone of the tests: summer time starts on 2024-03-31 at
// 02:00 CET (clocks go to 03:00) and ends on 2024-10-27 at 03:00 CEST
// (clocks go back to 02:00).
func berlin(t *testing.T) *time.Location {
	t.Helper()
	loc, err := time.LoadLocation("Europe/Berlin")
	if err != nil {
		t.Skipf("no time zone data: %v", err)
	}
	return loc
}

var nextID uint32

// snap returns a snapshot at t with tags and a fresh id, greater than the
// ids before it.
func snap(t time.Time, tags ...string) *snapshot.Snapshot {
	nextID++
	var id repo.ID
	binary.BigEndian.PutUint32(id[:], nextID)
	return &snapshot.Snapshot{Time: t, Hostname: "h", Paths: []string{"/data"}, Tags: tags, ID: id}
}

// at is a wall-clock time in loc. Never use it in the hour that occurs
// twice when summer time ends: use utc there.
func at(loc *time.Location, s string) time.Time {
	t, err := time.ParseInLocation("2006-01-02 15:04", s, loc)
	if err != nil {
		panic(err)
	}
	return t
}

func utc(s string) time.Time { return at(time.UTC, s) }

// outcome describes a decision as "TIME: reasons" for every kept snapshot
// and "TIME: -" for every removed one, newest first, times in loc.
func outcome(d snapshot.Decision, loc *time.Location) []string {
	type line struct {
		t time.Time
		s string
	}
	var lines []line
	for i, sn := range d.Keep {
		if d.Reasons[i].Snapshot != sn {
			panic("reasons out of order")
		}
		lines = append(lines, line{sn.Time, strings.Join(d.Reasons[i].Matches, ", ")})
	}
	for _, sn := range d.Remove {
		lines = append(lines, line{sn.Time, "-"})
	}
	slices.SortStableFunc(lines, func(a, b line) int { return b.t.Compare(a.t) })
	var out []string
	for _, l := range lines {
		out = append(out, l.t.In(loc).Format("2006-01-02 15:04 MST")+": "+l.s)
	}
	return out
}

func check(t *testing.T, name string, got, want []string) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Errorf("%s:\ngot:\n  %s\nwant:\n  %s", name, strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
}

// apply runs p with now well after every snapshot.
func apply(p snapshot.Policy, list []*snapshot.Snapshot, loc *time.Location) []string {
	return outcome(p.Apply(list, utc("2030-01-01 00:00"), loc), loc)
}

func TestParseDuration(t *testing.T) {
	for _, c := range []struct {
		in   string
		want snapshot.Duration
		str  string
	}{
		{"2y5m7d3h", snapshot.Duration{Years: 2, Months: 5, Days: 7, Hours: 3}, "2y5m7d3h"},
		{"3h2d", snapshot.Duration{Days: 2, Hours: 3}, "2d3h"},
		{"1m", snapshot.Duration{Months: 1}, "1m"},
		{" 36h ", snapshot.Duration{Hours: 36}, "36h"},
		{"1d2d", snapshot.Duration{Days: 2}, "2d"},
	} {
		got, err := snapshot.ParseDuration(c.in)
		if err != nil || got != c.want {
			t.Errorf("ParseDuration(%q) = %+v, %v; want %+v", c.in, got, err, c.want)
		}
		if got.String() != c.str {
			t.Errorf("ParseDuration(%q).String() = %q, want %q", c.in, got.String(), c.str)
		}
	}
	if d, err := snapshot.ParseDuration("-2d"); err != nil || !d.Negative() {
		t.Errorf("ParseDuration(-2d) = %+v, %v; want a negative duration", d, err)
	}
	for _, bad := range []string{"", "5", "d", "5x", "1d-", "-", "2 d", "1.5d"} {
		if d, err := snapshot.ParseDuration(bad); err == nil {
			t.Errorf("ParseDuration(%q) = %+v, want an error", bad, d)
		}
	}
}

func TestPolicyKeepLast(t *testing.T) {
	loc := berlin(t)
	list := []*snapshot.Snapshot{
		snap(at(loc, "2024-05-02 10:00")),
		snap(at(loc, "2024-05-04 10:00")),
		snap(at(loc, "2024-05-01 10:00")),
		snap(at(loc, "2024-05-03 10:00")),
	}
	orig := slices.Clone(list)
	check(t, "last 2", apply(snapshot.Policy{Last: 2}, list, loc), []string{
		"2024-05-04 10:00 CEST: last snapshot",
		"2024-05-03 10:00 CEST: last snapshot",
		"2024-05-02 10:00 CEST: -",
		"2024-05-01 10:00 CEST: -",
	})
	if !slices.Equal(list, orig) {
		t.Error("Apply reordered its argument")
	}
	// More than there are: all kept, each for being among the last; the
	// counter never ran out, so the oldest is kept by the rule anyway.
	check(t, "last 10", apply(snapshot.Policy{Last: 10}, list, loc), []string{
		"2024-05-04 10:00 CEST: last snapshot",
		"2024-05-03 10:00 CEST: last snapshot",
		"2024-05-02 10:00 CEST: last snapshot",
		"2024-05-01 10:00 CEST: last snapshot",
	})
	check(t, "last unlimited", apply(snapshot.Policy{Last: snapshot.Unlimited}, list, loc), []string{
		"2024-05-04 10:00 CEST: last snapshot",
		"2024-05-03 10:00 CEST: last snapshot",
		"2024-05-02 10:00 CEST: last snapshot",
		"2024-05-01 10:00 CEST: last snapshot",
	})
}

func TestPolicySameTime(t *testing.T) {
	loc := berlin(t)
	a, b := snap(at(loc, "2024-05-01 10:00")), snap(at(loc, "2024-05-01 10:00"))
	// b has the greater id: it counts as the newer one, as for "latest".
	d := snapshot.Policy{Last: 1}.Apply([]*snapshot.Snapshot{b, a}, utc("2030-01-01 00:00"), loc)
	if len(d.Keep) != 1 || d.Keep[0] != b || len(d.Remove) != 1 || d.Remove[0] != a {
		t.Errorf("last 1 of two at the same time: kept %v, removed %v; want the greater id kept", d.Keep, d.Remove)
	}
	d = snapshot.Policy{Last: 1}.Apply([]*snapshot.Snapshot{a, b}, utc("2030-01-01 00:00"), loc)
	if len(d.Keep) != 1 || d.Keep[0] != b {
		t.Errorf("the choice depends on the order of the list: kept %v", d.Keep)
	}
}

// Days are calendar days in local time, 23 or 25 hours long when the
// clocks change; a day in UTC would group these differently.
func TestPolicyDailyAcrossSummerTime(t *testing.T) {
	loc := berlin(t)
	list := []*snapshot.Snapshot{
		snap(at(loc, "2024-03-30 23:30")), // CET, 22:30 UTC
		snap(at(loc, "2024-03-31 00:30")), // CET, still 2024-03-30 in UTC
		snap(at(loc, "2024-03-31 03:30")), // CEST, one hour after 01:30
		snap(at(loc, "2024-03-31 23:30")), // CEST, 21:30 UTC
		snap(at(loc, "2024-04-01 00:30")), // CEST, still 2024-03-31 in UTC
	}
	check(t, "daily 2", apply(snapshot.Policy{Daily: 2}, list, loc), []string{
		"2024-04-01 00:30 CEST: daily snapshot",
		"2024-03-31 23:30 CEST: daily snapshot",
		"2024-03-31 03:30 CEST: -",
		"2024-03-31 00:30 CET: -",
		"2024-03-30 23:30 CET: -",
	})
	// Three days for ten: the oldest snapshot is the newest of its day
	// already, so it needs no second reason.
	check(t, "daily 10", apply(snapshot.Policy{Daily: 10}, list, loc), []string{
		"2024-04-01 00:30 CEST: daily snapshot",
		"2024-03-31 23:30 CEST: daily snapshot",
		"2024-03-31 03:30 CEST: -",
		"2024-03-31 00:30 CET: -",
		"2024-03-30 23:30 CET: daily snapshot",
	})
}

// The hour from 02:00 to 03:00 happens twice when summer time ends: both
// are one hourly bucket, as in restic.
func TestPolicyHourlyAcrossSummerTime(t *testing.T) {
	loc := berlin(t)
	list := []*snapshot.Snapshot{
		snap(utc("2024-10-26 23:30")), // 01:30 CEST
		snap(utc("2024-10-27 00:10")), // 02:10 CEST
		snap(utc("2024-10-27 00:40")), // 02:40 CEST
		snap(utc("2024-10-27 01:20")), // 02:20 CET, the second 02:xx
		snap(utc("2024-10-27 02:30")), // 03:30 CET
	}
	check(t, "hourly 3", apply(snapshot.Policy{Hourly: 3}, list, loc), []string{
		"2024-10-27 03:30 CET: hourly snapshot",
		"2024-10-27 02:20 CET: hourly snapshot",
		"2024-10-27 02:40 CEST: -",
		"2024-10-27 02:10 CEST: -",
		"2024-10-27 01:30 CEST: hourly snapshot",
	})
	// Four hours asked, two found: the oldest is kept too, though its hour
	// has a newer snapshot.
	check(t, "hourly 4", apply(snapshot.Policy{Hourly: 4}, list[1:], loc), []string{
		"2024-10-27 03:30 CET: hourly snapshot",
		"2024-10-27 02:20 CET: hourly snapshot",
		"2024-10-27 02:40 CEST: -",
		"2024-10-27 02:10 CEST: oldest hourly snapshot",
	})
}

// Weeks are ISO weeks: they run Monday to Sunday and belong to the year
// that holds their Thursday.
func TestPolicyWeeklyISOWeeks(t *testing.T) {
	loc := berlin(t)
	list := []*snapshot.Snapshot{
		snap(at(loc, "2024-12-28 12:00")), // Saturday, 2024-W52
		snap(at(loc, "2024-12-29 12:00")), // Sunday, 2024-W52
		snap(at(loc, "2024-12-30 12:00")), // Monday, 2025-W01
		snap(at(loc, "2025-01-05 12:00")), // Sunday, 2025-W01
		snap(at(loc, "2025-01-06 12:00")), // Monday, 2025-W02
	}
	check(t, "weekly 3", apply(snapshot.Policy{Weekly: 3}, list, loc), []string{
		"2025-01-06 12:00 CET: weekly snapshot",
		"2025-01-05 12:00 CET: weekly snapshot",
		"2024-12-30 12:00 CET: -",
		"2024-12-29 12:00 CET: weekly snapshot",
		"2024-12-28 12:00 CET: -",
	})

	// 2020 has an ISO week 53 that ends on Sunday 2021-01-03.
	list = []*snapshot.Snapshot{
		snap(at(loc, "2020-12-28 12:00")), // Monday, 2020-W53
		snap(at(loc, "2021-01-03 12:00")), // Sunday, 2020-W53
		snap(at(loc, "2021-01-04 12:00")), // Monday, 2021-W01
	}
	check(t, "weekly 3 over week 53", apply(snapshot.Policy{Weekly: 3}, list, loc), []string{
		"2021-01-04 12:00 CET: weekly snapshot",
		"2021-01-03 12:00 CET: weekly snapshot",
		"2020-12-28 12:00 CET: oldest weekly snapshot",
	})
	check(t, "weekly 2 over week 53", apply(snapshot.Policy{Weekly: 2}, list, loc), []string{
		"2021-01-04 12:00 CET: weekly snapshot",
		"2021-01-03 12:00 CET: weekly snapshot",
		"2020-12-28 12:00 CET: -",
	})
}

func TestPolicyMonthlyYearly(t *testing.T) {
	loc := berlin(t)
	list := []*snapshot.Snapshot{
		snap(at(loc, "2022-11-15 12:00")),
		snap(at(loc, "2023-12-31 23:30")), // 22:30 UTC: still 2023 in both
		snap(at(loc, "2024-01-01 00:30")), // 2023-12-31 23:30 UTC
		snap(at(loc, "2024-01-20 12:00")),
		snap(at(loc, "2024-02-10 12:00")),
	}
	check(t, "monthly 2", apply(snapshot.Policy{Monthly: 2}, list, loc), []string{
		"2024-02-10 12:00 CET: monthly snapshot",
		"2024-01-20 12:00 CET: monthly snapshot",
		"2024-01-01 00:30 CET: -",
		"2023-12-31 23:30 CET: -",
		"2022-11-15 12:00 CET: -",
	})
	check(t, "yearly 2", apply(snapshot.Policy{Yearly: 2}, list, loc), []string{
		"2024-02-10 12:00 CET: yearly snapshot",
		"2024-01-20 12:00 CET: -",
		"2024-01-01 00:30 CET: -",
		"2023-12-31 23:30 CET: yearly snapshot",
		"2022-11-15 12:00 CET: -",
	})
	check(t, "yearly 3", apply(snapshot.Policy{Yearly: 3}, list, loc), []string{
		"2024-02-10 12:00 CET: yearly snapshot",
		"2024-01-20 12:00 CET: -",
		"2024-01-01 00:30 CET: -",
		"2023-12-31 23:30 CET: yearly snapshot",
		"2022-11-15 12:00 CET: yearly snapshot",
	})
}

// A rule that finds fewer buckets than it may keep also keeps the oldest
// snapshot (restic 0.16 and later).
func TestPolicyKeepsOldest(t *testing.T) {
	loc := berlin(t)
	list := []*snapshot.Snapshot{
		snap(at(loc, "2024-02-10 12:00")),
		snap(at(loc, "2024-02-25 12:00")),
		snap(at(loc, "2024-03-05 12:00")),
		snap(at(loc, "2024-03-20 12:00")),
	}
	check(t, "monthly 5: two months", apply(snapshot.Policy{Monthly: 5}, list, loc), []string{
		"2024-03-20 12:00 CET: monthly snapshot",
		"2024-03-05 12:00 CET: -",
		"2024-02-25 12:00 CET: monthly snapshot",
		"2024-02-10 12:00 CET: oldest monthly snapshot",
	})
	check(t, "monthly 2: exactly two months", apply(snapshot.Policy{Monthly: 2}, list, loc), []string{
		"2024-03-20 12:00 CET: monthly snapshot",
		"2024-03-05 12:00 CET: -",
		"2024-02-25 12:00 CET: monthly snapshot",
		"2024-02-10 12:00 CET: -",
	})
	check(t, "monthly unlimited", apply(snapshot.Policy{Monthly: snapshot.Unlimited}, list, loc), []string{
		"2024-03-20 12:00 CET: monthly snapshot",
		"2024-03-05 12:00 CET: -",
		"2024-02-25 12:00 CET: monthly snapshot",
		"2024-02-10 12:00 CET: oldest monthly snapshot",
	})
	// Every rule that has counts left gives its reason.
	check(t, "daily 3 and weekly 9", apply(snapshot.Policy{Daily: 3, Weekly: 9}, list, loc), []string{
		"2024-03-20 12:00 CET: daily snapshot, weekly snapshot",
		"2024-03-05 12:00 CET: daily snapshot, weekly snapshot",
		"2024-02-25 12:00 CET: daily snapshot, weekly snapshot",
		"2024-02-10 12:00 CET: weekly snapshot",
	})
	one := []*snapshot.Snapshot{snap(at(loc, "2024-02-10 12:00"))}
	check(t, "a single snapshot", apply(snapshot.Policy{Yearly: 3}, one, loc), []string{
		"2024-02-10 12:00 CET: yearly snapshot",
	})
}

func TestPolicyUnlimitedDaily(t *testing.T) {
	loc := berlin(t)
	list := []*snapshot.Snapshot{
		snap(at(loc, "2024-06-01 08:00")),
		snap(at(loc, "2024-06-01 20:00")),
		snap(at(loc, "2024-06-03 09:00")),
		snap(at(loc, "2024-06-07 07:00")),
		snap(at(loc, "2024-06-07 19:00")),
	}
	check(t, "daily unlimited", apply(snapshot.Policy{Daily: snapshot.Unlimited}, list, loc), []string{
		"2024-06-07 19:00 CEST: daily snapshot",
		"2024-06-07 07:00 CEST: -",
		"2024-06-03 09:00 CEST: daily snapshot",
		"2024-06-01 20:00 CEST: daily snapshot",
		"2024-06-01 08:00 CEST: oldest daily snapshot",
	})
}

func TestPolicyWithin(t *testing.T) {
	loc := berlin(t)
	// The newest is the day summer time starts: a day before it, in
	// calendar terms, is 23 hours earlier.
	list := []*snapshot.Snapshot{
		snap(at(loc, "2024-03-31 12:00")), // CEST
		snap(at(loc, "2024-03-30 12:30")), // CET, 22.5 hours before
		snap(at(loc, "2024-03-30 12:00")), // exactly a calendar day before
		snap(at(loc, "2024-03-30 11:30")), // 23.5 hours before
	}
	check(t, "within 1d", apply(snapshot.Policy{Within: snapshot.Duration{Days: 1}}, list, loc), []string{
		"2024-03-31 12:00 CEST: within 1d",
		"2024-03-30 12:30 CET: within 1d",
		"2024-03-30 12:00 CET: -",
		"2024-03-30 11:30 CET: -",
	})
	check(t, "within 24h", apply(snapshot.Policy{Within: snapshot.Duration{Hours: 24}}, list, loc), []string{
		"2024-03-31 12:00 CEST: within 24h",
		"2024-03-30 12:30 CET: within 24h",
		"2024-03-30 12:00 CET: within 24h",
		"2024-03-30 11:30 CET: within 24h",
	})

	// Relative to the newest snapshot, not to now: years later, the same.
	list = []*snapshot.Snapshot{
		snap(at(loc, "2021-06-10 12:00")),
		snap(at(loc, "2021-06-08 10:00")),
		snap(at(loc, "2021-06-08 08:00")),
		snap(at(loc, "2021-05-01 08:00")),
	}
	check(t, "within 2d3h", apply(snapshot.Policy{Within: snapshot.Duration{Days: 2, Hours: 3}}, list, loc), []string{
		"2021-06-10 12:00 CEST: within 2d3h",
		"2021-06-08 10:00 CEST: within 2d3h",
		"2021-06-08 08:00 CEST: -",
		"2021-05-01 08:00 CEST: -",
	})

	// A month before 2024-03-31 is "February 31", which is March 2.
	list = []*snapshot.Snapshot{
		snap(at(loc, "2024-03-31 12:00")),
		snap(at(loc, "2024-03-02 12:01")),
		snap(at(loc, "2024-03-02 12:00")),
		snap(at(loc, "2024-02-29 12:00")),
	}
	check(t, "within 1m", apply(snapshot.Policy{Within: snapshot.Duration{Months: 1}}, list, loc), []string{
		"2024-03-31 12:00 CEST: within 1m",
		"2024-03-02 12:01 CET: within 1m",
		"2024-03-02 12:00 CET: -",
		"2024-02-29 12:00 CET: -",
	})
}

// A snapshot dated in the future (a wrong clock) does not move the
// reference of --keep-within; it is kept, being newer than the cutoff.
func TestPolicyWithinIgnoresFuture(t *testing.T) {
	loc := berlin(t)
	list := []*snapshot.Snapshot{
		snap(at(loc, "2024-09-01 12:00")), // the future
		snap(at(loc, "2024-06-10 12:00")),
		snap(at(loc, "2024-06-09 13:00")),
		snap(at(loc, "2024-06-09 11:00")),
	}
	now := at(loc, "2024-07-01 00:00")
	p := snapshot.Policy{Within: snapshot.Duration{Days: 1}}
	check(t, "within 1d, one in the future", outcome(p.Apply(list, now, loc), loc), []string{
		"2024-09-01 12:00 CEST: within 1d",
		"2024-06-10 12:00 CEST: within 1d",
		"2024-06-09 13:00 CEST: within 1d",
		"2024-06-09 11:00 CEST: -",
	})
	// All in the future: nothing to count from, all are kept.
	now = at(loc, "2024-01-01 00:00")
	d := p.Apply(list, now, loc)
	if len(d.Keep) != len(list) {
		t.Errorf("within 1d, all in the future: kept %d of %d", len(d.Keep), len(list))
	}
}

func TestPolicyKeepTags(t *testing.T) {
	loc := berlin(t)
	list := []*snapshot.Snapshot{
		snap(at(loc, "2024-06-06 12:00"), "a"),
		snap(at(loc, "2024-06-05 12:00"), "a", "b"),
		snap(at(loc, "2024-06-04 12:00"), "x", "b", "a"),
		snap(at(loc, "2024-06-03 12:00"), "c"),
		snap(at(loc, "2024-06-02 12:00")),
		snap(at(loc, "2024-06-01 12:00"), "b", "c"),
	}
	p := snapshot.Policy{Tags: [][]string{
		snapshot.ParseTagList("a,b"),
		snapshot.ParseTagList("c"),
	}}
	check(t, "keep-tag a,b and c", apply(p, list, loc), []string{
		"2024-06-06 12:00 CEST: -",
		"2024-06-05 12:00 CEST: tags a,b",
		"2024-06-04 12:00 CEST: tags a,b",
		"2024-06-03 12:00 CEST: tag c",
		"2024-06-02 12:00 CEST: -",
		"2024-06-01 12:00 CEST: tag c",
	})
	// Reasons come in a fixed order: tags, within, then the counting rules.
	p.Last = 1
	p.Within = snapshot.Duration{Days: 2}
	p.Daily = 1
	check(t, "with more rules", apply(p, list[:3], loc), []string{
		"2024-06-06 12:00 CEST: within 2d, last snapshot, daily snapshot",
		"2024-06-05 12:00 CEST: tags a,b, within 2d",
		"2024-06-04 12:00 CEST: tags a,b",
	})
}

func TestPolicyCombined(t *testing.T) {
	loc := berlin(t)
	var list []*snapshot.Snapshot
	// Every day of January 2024 at 22:00, and twice on the 31st.
	for day := 1; day <= 31; day++ {
		list = append(list, snap(at(loc, fmt.Sprintf("2024-01-%02d 22:00", day))))
	}
	list = append(list, snap(at(loc, "2024-01-31 23:00")))
	p := snapshot.Policy{Last: 2, Daily: 3, Weekly: 3, Monthly: 2}
	got := apply(p, list, loc)
	var kept []string
	for _, l := range got {
		if !strings.HasSuffix(l, ": -") {
			kept = append(kept, l)
		}
	}
	// 2024-01-31 is a Wednesday (week 5); the Sundays 28 and 21 close
	// weeks 4 and 3. The month has no second one before it: the oldest
	// snapshot is kept for the monthly rule.
	check(t, "last 2, daily 3, weekly 3, monthly 2", kept, []string{
		"2024-01-31 23:00 CET: last snapshot, daily snapshot, weekly snapshot, monthly snapshot",
		"2024-01-31 22:00 CET: last snapshot",
		"2024-01-30 22:00 CET: daily snapshot",
		"2024-01-29 22:00 CET: daily snapshot",
		"2024-01-28 22:00 CET: weekly snapshot",
		"2024-01-21 22:00 CET: weekly snapshot",
		"2024-01-01 22:00 CET: oldest monthly snapshot",
	})
	if n := len(got) - len(kept); n != 32-7 {
		t.Errorf("removed %d, want %d", n, 32-7)
	}
}

func TestPolicyEmpty(t *testing.T) {
	if !(snapshot.Policy{}).Empty() {
		t.Error("the zero policy is not empty")
	}
	for _, p := range []snapshot.Policy{
		{Last: 1}, {Yearly: snapshot.Unlimited}, {Within: snapshot.Duration{Hours: 1}},
		{Tags: [][]string{{"a"}}},
	} {
		if p.Empty() {
			t.Errorf("%+v is empty", p)
		}
	}
	if s := (snapshot.Policy{Daily: 7, Monthly: snapshot.Unlimited, Within: snapshot.Duration{Days: 2}}).String(); s !=
		"keep 7 daily, all monthly snapshots and snapshots within 2d of the newest" {
		t.Errorf("String() = %q", s)
	}
}

func TestGroupSnapshots(t *testing.T) {
	loc := berlin(t)
	mk := func(host, cluster, component string, paths, tags []string) *snapshot.Snapshot {
		sn := snap(at(loc, "2024-06-01 12:00"), tags...)
		sn.Hostname, sn.Cluster, sn.Component, sn.Paths = host, cluster, component, paths
		return sn
	}
	list := []*snapshot.Snapshot{
		mk("h2", "", "", []string{"/a", "/b"}, []string{"y", "x"}),
		mk("h1", "", "", []string{"/b", "/a"}, []string{"x", "y"}),
		mk("h1", "", "", []string{"/a"}, nil),
		mk("h1", "c1", "etcd", []string{"/a"}, []string{"x"}),
		mk("h1", "c1", "pg", []string{"/a"}, nil),
	}
	describe := func(groups []snapshot.Group, by snapshot.GroupBy) []string {
		var out []string
		for _, g := range groups {
			var members []string
			for _, sn := range g.Snapshots {
				members = append(members, fmt.Sprint(slices.Index(list, sn)))
			}
			out = append(out, g.Key.String(by)+": "+strings.Join(members, " "))
		}
		return out
	}
	for _, c := range []struct {
		by   string
		want []string
	}{
		{"host,cluster,component,paths", []string{
			"host h1, paths [/a]: 2",
			"host h1, paths [/a, /b]: 1",
			"host h1, cluster c1, component etcd, paths [/a]: 3",
			"host h1, cluster c1, component pg, paths [/a]: 4",
			"host h2, paths [/a, /b]: 0",
		}},
		{"", []string{"all snapshots: 0 1 2 3 4"}},
		{"tags", []string{"tags []: 2 4", "tags [x]: 3", "tags [x, y]: 0 1"}},
		{"host", []string{"host h1: 1 2 3 4", "host h2: 0"}},
		{"paths,host", []string{"host h1, paths [/a]: 2 3 4", "host h1, paths [/a, /b]: 1", "host h2, paths [/a, /b]: 0"}},
		{"cluster", []string{"no cluster: 0 1 2", "cluster c1: 3 4"}},
		{"cluster,component", []string{"no cluster, no component: 0 1 2", "cluster c1, component etcd: 3", "cluster c1, component pg: 4"}},
	} {
		by, err := snapshot.ParseGroupBy(c.by)
		if err != nil {
			t.Fatalf("ParseGroupBy(%q): %v", c.by, err)
		}
		check(t, "group by "+c.by, describe(snapshot.GroupSnapshots(list, by), by), c.want)
	}
	if by, _ := snapshot.ParseGroupBy("host,cluster,component,paths"); by != snapshot.DefaultGroupBy {
		t.Errorf("the default fields parse as %+v", by)
	}
	for _, bad := range []string{"hostname", "host,time", "paths;tags"} {
		if _, err := snapshot.ParseGroupBy(bad); err == nil {
			t.Errorf("ParseGroupBy(%q) succeeded", bad)
		}
	}
}
