package cluster

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/cairn-backup/cairn/repo"
	"github.com/cairn-backup/cairn/snapshot"
)

// RunRecords are a run and the record files it is merged from.
type RunRecords struct {
	Run   *Run
	Files []repo.ID // starts last, so that a removal cut short leaves a run that is still found
}

// Unreferenced returns the runs of cluster whose records can go, oldest
// first, given the snapshots left in the repository:
//
//   - a finished run none of whose snapshots is left;
//   - a finished run that never had a snapshot (it failed before any was
//     saved) once it started before every snapshot of the cluster left, so
//     that a recent failure stays on record as long as the snapshots
//     around it.
//
// A run still going is never returned: its components may yet report.
// Records that cannot be read go to skip (or fail the call when skip is
// nil) and stay.
func Unreferenced(ctx context.Context, r *repo.Repo, cluster string, left []*snapshot.Snapshot, now time.Time, skip func(repo.ID, error)) ([]RunRecords, error) {
	recs, err := loadRecords(ctx, r, skip)
	if err != nil {
		return nil, err
	}
	return unreferenced(recs, cluster, left, now), nil
}

// RemoveRecords deletes the record files of a run.
func RemoveRecords(ctx context.Context, r *repo.Repo, rr RunRecords) error {
	for i, id := range rr.Files {
		if err := r.RemoveFile(ctx, repo.RunFile, id); err != nil {
			return fmt.Errorf("remove record %s of run %s (%d of %d removed before it): %w", id.Short(), rr.Run.ID, i, len(rr.Files), err)
		}
	}
	return nil
}

// unreferenced is Unreferenced on records already read.
func unreferenced(recs []fileRecord, cluster string, left []*snapshot.Snapshot, now time.Time) []RunRecords {
	byRun := map[string][]fileRecord{}
	for _, fr := range recs {
		byRun[fr.rec.Run] = append(byRun[fr.rec.Run], fr)
	}
	// What is left: snapshot ids, the runs they name, and the oldest time
	// of the cluster's.
	ids := map[string]bool{}
	runs := map[string]bool{}
	var oldest time.Time
	for _, sn := range left {
		ids[sn.ID.String()] = true
		if sn.Run != "" {
			runs[sn.Run] = true
		}
		if sn.Cluster == cluster && (oldest.IsZero() || sn.Time.Before(oldest)) {
			oldest = sn.Time
		}
	}
	var out []RunRecords
	for id, list := range byRun {
		plain := make([]record, len(list))
		for i, fr := range list {
			plain[i] = fr.rec
		}
		run := merge(id, plain, now)
		if run.Cluster != cluster || run.Phase == PhaseRunning || runs[id] {
			continue
		}
		had, kept := false, false
		for _, c := range run.Components {
			if c.SnapshotID != "" {
				had = true
				kept = kept || ids[c.SnapshotID]
			}
		}
		if kept || !had && !oldest.IsZero() && !run.Started.Before(oldest) {
			continue
		}
		rr := RunRecords{Run: run}
		for _, start := range []bool{false, true} {
			for _, fr := range list {
				if (fr.rec.Type == recordStart) == start {
					rr.Files = append(rr.Files, fr.id)
				}
			}
		}
		out = append(out, rr)
	}
	slices.SortFunc(out, func(a, b RunRecords) int {
		if c := a.Run.Started.Compare(b.Run.Started); c != 0 {
			return c
		}
		return strings.Compare(a.Run.ID, b.Run.ID)
	})
	return out
}
