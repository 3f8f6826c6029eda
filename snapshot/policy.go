package snapshot

import (
	"bytes"
	"cmp"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Retention policies, with the semantics of restic 0.16 and later
// (cli.md, "cairn forget"): a snapshot is kept if any rule keeps it.
//
// The counting rules (last, hourly, daily, weekly, monthly, yearly) walk the
// snapshots newest first and keep the newest snapshot of each of the newest
// N buckets (calendar hours, days, ISO weeks, months, years in local time)
// that hold snapshots. A rule that finds fewer than N buckets, or has no
// limit, also keeps the oldest snapshot, so that the history kept reaches as
// far back as it can. restic 0.14 lacks that last part.

// Duration is a span given in calendar units, as in "2y5m7d3h". Years,
// months and days are calendar steps (time.AddDate), not fixed lengths.
type Duration struct {
	Years, Months, Days, Hours int
}

// ParseDuration reads restic's duration syntax: numbers each followed by y,
// m, d or h, such as "1y6m", "7d" or "2d3h". A unit given twice takes the
// last value, as restic does.
func ParseDuration(s string) (Duration, error) {
	var d Duration
	rest := strings.TrimSpace(s)
	if rest == "" {
		return d, fmt.Errorf("invalid duration %q: empty", s)
	}
	for rest != "" {
		i := 0
		if rest[0] == '-' {
			i++
		}
		for i < len(rest) && rest[i] >= '0' && rest[i] <= '9' {
			i++
		}
		if i == 0 || rest[:i] == "-" {
			return Duration{}, fmt.Errorf("invalid duration %q: want numbers with units y, m, d or h, like 2y5m7d3h", s)
		}
		n, err := strconv.Atoi(rest[:i])
		if err != nil {
			return Duration{}, fmt.Errorf("invalid duration %q: %w", s, err)
		}
		if i == len(rest) {
			return Duration{}, fmt.Errorf("invalid duration %q: no unit after %d (want y, m, d or h)", s, n)
		}
		switch rest[i] {
		case 'y':
			d.Years = n
		case 'm':
			d.Months = n
		case 'd':
			d.Days = n
		case 'h':
			d.Hours = n
		default:
			return Duration{}, fmt.Errorf("invalid duration %q: unknown unit %q (want y, m, d or h)", s, rest[i])
		}
		rest = rest[i+1:]
	}
	return d, nil
}

// IsZero reports whether d spans nothing.
func (d Duration) IsZero() bool { return d == Duration{} }

// Negative reports whether any part of d is negative.
func (d Duration) Negative() bool {
	return d.Years < 0 || d.Months < 0 || d.Days < 0 || d.Hours < 0
}

// String prints d in the form ParseDuration reads, largest unit first.
func (d Duration) String() string {
	var b strings.Builder
	for _, p := range []struct {
		n    int
		unit string
	}{{d.Years, "y"}, {d.Months, "m"}, {d.Days, "d"}, {d.Hours, "h"}} {
		if p.n != 0 {
			fmt.Fprintf(&b, "%d%s", p.n, p.unit)
		}
	}
	if b.Len() == 0 {
		return "0h"
	}
	return b.String()
}

// Before returns the time d before t, in t's location: a day back from noon
// is noon the day before, even across a change to or from summer time.
func (d Duration) Before(t time.Time) time.Time {
	return t.AddDate(-d.Years, -d.Months, -d.Days).Add(-time.Duration(d.Hours) * time.Hour)
}

// Unlimited as a count keeps a snapshot for every bucket.
const Unlimited = -1

// Policy says which snapshots of a group to keep. Counts are 0 for an unused
// rule and Unlimited for no limit.
type Policy struct {
	Last, Hourly, Daily, Weekly, Monthly, Yearly int
	// Within keeps every snapshot newer than this span before the newest
	// snapshot (not before now: an old repository is not emptied by time
	// passing).
	Within Duration
	// Tags keeps snapshots that carry all the tags of any one list.
	Tags [][]string
}

// Empty reports whether p has no rule at all.
func (p Policy) Empty() bool {
	return p.Last == 0 && p.Hourly == 0 && p.Daily == 0 && p.Weekly == 0 &&
		p.Monthly == 0 && p.Yearly == 0 && p.Within.IsZero() && len(p.Tags) == 0
}

// String describes p for people ("keep 7 daily, all monthly snapshots ...").
func (p Policy) String() string {
	var parts []string
	for _, r := range p.rules() {
		switch {
		case r.count == Unlimited:
			parts = append(parts, "all "+r.name)
		case r.count > 0:
			parts = append(parts, fmt.Sprintf("%d %s", r.count, r.name))
		}
	}
	var s []string
	if len(parts) > 0 {
		s = append(s, strings.Join(parts, ", ")+" snapshots")
	}
	for _, tags := range p.Tags {
		s = append(s, "snapshots with "+tagReason(tags))
	}
	if !p.Within.IsZero() {
		s = append(s, "snapshots within "+p.Within.String()+" of the newest")
	}
	if len(s) == 0 {
		return "keep everything"
	}
	return "keep " + strings.Join(s, " and ")
}

// bucketRule is one counting rule: key maps a local time (and the
// snapshot's position, for "last") to its bucket.
type bucketRule struct {
	count int
	name  string
	key   func(t time.Time, nr int) int
}

func (p Policy) rules() []bucketRule {
	return []bucketRule{
		{p.Last, "last", func(_ time.Time, nr int) int { return nr }},
		{p.Hourly, "hourly", func(t time.Time, _ int) int {
			return t.Year()*1000000 + int(t.Month())*10000 + t.Day()*100 + t.Hour()
		}},
		{p.Daily, "daily", func(t time.Time, _ int) int {
			return t.Year()*10000 + int(t.Month())*100 + t.Day()
		}},
		{p.Weekly, "weekly", func(t time.Time, _ int) int {
			year, week := t.ISOWeek()
			return year*100 + week
		}},
		{p.Monthly, "monthly", func(t time.Time, _ int) int { return t.Year()*100 + int(t.Month()) }},
		{p.Yearly, "yearly", func(t time.Time, _ int) int { return t.Year() }},
	}
}

// Reason says why a snapshot is kept: "last snapshot", "daily snapshot",
// "oldest monthly snapshot", "within 2d3h", "tag a".
type Reason struct {
	Snapshot *Snapshot
	Matches  []string
}

// Decision is the outcome of a policy for one group, newest first.
type Decision struct {
	Keep    []*Snapshot
	Remove  []*Snapshot
	Reasons []Reason // one per kept snapshot, in the order of Keep
}

// SortNewestFirst orders list newest first. Of snapshots with the same time
// the one with the greater id counts as newer, as "latest" picks it.
func SortNewestFirst(list []*Snapshot) {
	slices.SortFunc(list, func(a, b *Snapshot) int {
		if c := b.Time.Compare(a.Time); c != 0 {
			return c
		}
		return bytes.Compare(b.ID[:], a.ID[:])
	})
}

// Apply decides which snapshots of one group p keeps. Buckets are taken in
// loc (time.Local for the command); now only serves to ignore snapshots
// dated in the future when finding the newest one for Within. list is not
// changed.
func (p Policy) Apply(list []*Snapshot, now time.Time, loc *time.Location) Decision {
	d := Decision{Keep: []*Snapshot{}, Remove: []*Snapshot{}, Reasons: []Reason{}}
	sorted := slices.Clone(list)
	SortNewestFirst(sorted)

	// Within counts back from the newest snapshot that is not in the future,
	// as restic does. If every snapshot is in the future there is none, the
	// cutoff stays zero and all are within.
	var cutoff time.Time
	within := !p.Within.IsZero()
	if within {
		var newest time.Time
		for _, sn := range sorted {
			if sn.Time.Before(now) && sn.Time.After(newest) {
				newest = sn.Time
			}
		}
		if !newest.IsZero() {
			cutoff = p.Within.Before(newest.In(loc))
		}
	}

	type state struct {
		bucketRule
		left  int // buckets still to keep; Unlimited never runs out
		last  int // bucket of the last snapshot kept
		begun bool
	}
	var rules []state
	for _, r := range p.rules() {
		if r.count != 0 {
			rules = append(rules, state{bucketRule: r, left: r.count})
		}
	}

	for nr, sn := range sorted {
		var matches []string
		for _, tags := range p.Tags {
			if hasAllTags(sn, tags) {
				matches = append(matches, tagReason(tags))
			}
		}
		if within && sn.Time.After(cutoff) {
			matches = append(matches, "within "+p.Within.String())
		}
		oldest := nr == len(sorted)-1
		for i := range rules {
			r := &rules[i]
			if r.left == 0 {
				continue
			}
			key := r.key(sn.Time.In(loc), nr)
			newBucket := !r.begun || key != r.last
			switch {
			case newBucket:
				matches = append(matches, r.name+" snapshot")
			case oldest:
				// Fewer buckets than asked for: keep the oldest too.
				matches = append(matches, "oldest "+r.name+" snapshot")
			default:
				continue
			}
			r.last, r.begun = key, true
			if r.left > 0 {
				r.left--
			}
		}
		if len(matches) == 0 {
			d.Remove = append(d.Remove, sn)
			continue
		}
		d.Keep = append(d.Keep, sn)
		d.Reasons = append(d.Reasons, Reason{Snapshot: sn, Matches: matches})
	}
	return d
}

// hasAllTags reports whether sn carries every tag of tags; an empty list
// matches snapshots without tags.
func hasAllTags(sn *Snapshot, tags []string) bool {
	if len(tags) == 0 {
		return len(sn.Tags) == 0
	}
	for _, t := range tags {
		if !slices.Contains(sn.Tags, t) {
			return false
		}
	}
	return true
}

func tagReason(tags []string) string {
	switch len(tags) {
	case 0:
		return "no tags"
	case 1:
		return "tag " + tags[0]
	}
	return "tags " + strings.Join(tags, ",")
}

// ParseTagList reads a --keep-tag value: tags separated by commas, all of
// which a snapshot must carry.
func ParseTagList(s string) []string {
	var tags []string
	for _, t := range strings.Split(s, ",") {
		if t = strings.TrimSpace(t); t != "" {
			tags = append(tags, t)
		}
	}
	return tags
}

// GroupBy names the fields whose values separate groups of snapshots, to
// each of which a policy applies on its own.
type GroupBy struct {
	Host, Cluster, Component, Paths, Tags bool
}

// DefaultGroupBy groups by host, cluster, component and paths.
var DefaultGroupBy = GroupBy{Host: true, Cluster: true, Component: true, Paths: true}

// ParseGroupBy reads a comma list of host, cluster, component, paths and
// tags; "" puts all snapshots in one group.
func ParseGroupBy(s string) (GroupBy, error) {
	var g GroupBy
	for _, f := range strings.Split(s, ",") {
		switch strings.TrimSpace(f) {
		case "":
		case "host", "hosts":
			g.Host = true
		case "cluster":
			g.Cluster = true
		case "component":
			g.Component = true
		case "paths", "path":
			g.Paths = true
		case "tags", "tag":
			g.Tags = true
		default:
			return g, fmt.Errorf("invalid group-by field %q: want host, cluster, component, paths or tags", strings.TrimSpace(f))
		}
	}
	return g, nil
}

// GroupKey holds the values of the group-by fields; fields not grouped by
// are empty.
type GroupKey struct {
	Host, Cluster, Component string
	Paths, Tags              []string // sorted
}

// String describes the key for people: "host db1, paths [/data]".
// Only the fields in by are named.
func (k GroupKey) String(by GroupBy) string {
	var parts []string
	if by.Host {
		parts = append(parts, "host "+k.Host)
	}
	// Most snapshots belong to no cluster: say so only when they do.
	if by.Cluster && k.Cluster != "" {
		parts = append(parts, "cluster "+k.Cluster)
	}
	if by.Component && k.Component != "" {
		parts = append(parts, "component "+k.Component)
	}
	if by.Paths {
		parts = append(parts, "paths ["+strings.Join(k.Paths, ", ")+"]")
	}
	if by.Tags {
		parts = append(parts, "tags ["+strings.Join(k.Tags, ", ")+"]")
	}
	if len(parts) == 0 {
		// Grouped only by cluster or component, and this group has none.
		if by.Cluster {
			parts = append(parts, "no cluster")
		}
		if by.Component {
			parts = append(parts, "no component")
		}
	}
	if len(parts) == 0 {
		return "all snapshots"
	}
	return strings.Join(parts, ", ")
}

func (k GroupKey) compare(o GroupKey) int {
	return cmp.Or(
		strings.Compare(k.Host, o.Host),
		strings.Compare(k.Cluster, o.Cluster),
		strings.Compare(k.Component, o.Component),
		slices.Compare(k.Paths, o.Paths),
		slices.Compare(k.Tags, o.Tags),
	)
}

// Group is a set of snapshots that share a key.
type Group struct {
	Key       GroupKey
	Snapshots []*Snapshot // in the order of the list they came from
}

// GroupSnapshots splits list by the fields in by. Groups come out sorted by
// key, so that output is the same from run to run.
func GroupSnapshots(list []*Snapshot, by GroupBy) []Group {
	var groups []Group
	for _, sn := range list {
		var k GroupKey
		if by.Host {
			k.Host = sn.Hostname
		}
		if by.Cluster {
			k.Cluster = sn.Cluster
		}
		if by.Component {
			k.Component = sn.Component
		}
		if by.Paths {
			k.Paths = sortedCopy(sn.Paths)
		}
		if by.Tags {
			k.Tags = sortedCopy(sn.Tags)
		}
		i, found := slices.BinarySearchFunc(groups, k, func(g Group, k GroupKey) int { return g.Key.compare(k) })
		if !found {
			groups = slices.Insert(groups, i, Group{Key: k})
		}
		groups[i].Snapshots = append(groups[i].Snapshots, sn)
	}
	return groups
}

// sortedCopy returns s sorted, never nil.
func sortedCopy(s []string) []string {
	c := append([]string{}, s...)
	slices.Sort(c)
	return c
}
