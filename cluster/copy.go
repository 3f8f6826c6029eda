package cluster

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/cairn-backup/cairn/repo"
)

// CopyRuns copies the records of runs from src to dst, so that runs whose
// snapshots were copied can be listed and restored by their ids in dst too.
// Records keep their times, hosts and processes. copyOf maps a snapshot id
// of src to its copy in dst: an event naming a snapshot without a copy
// there is left out, so that dst never claims a component it cannot
// restore. Records dst holds already are not stored again, so copying twice
// changes nothing. A record that cannot be read goes to skip. It returns
// the number of records stored.
func CopyRuns(ctx context.Context, src, dst *repo.Repo, runs []string, copyOf func(id string) (string, bool),
	skip func(repo.ID, error)) (int, error) {
	want := map[string]bool{}
	for _, id := range runs {
		if id != "" {
			want[id] = true
		}
	}
	if len(want) == 0 {
		return 0, nil
	}
	from, err := loadRecords(ctx, src, skip)
	if err != nil {
		return 0, fmt.Errorf("source repository: %w", err)
	}
	there, err := loadRecords(ctx, dst, skip)
	if err != nil {
		return 0, err
	}
	have := map[string]bool{}
	clusterThere := map[string]string{}
	for _, fr := range there {
		if want[fr.rec.Run] {
			have[recordKey(fr.rec)] = true
			clusterThere[fr.rec.Run] = fr.rec.Cluster
		}
	}
	n := 0
	for _, fr := range from {
		rec := fr.rec
		if !want[rec.Run] {
			continue
		}
		if c, ok := clusterThere[rec.Run]; ok && c != rec.Cluster {
			return n, fmt.Errorf("run %s of cluster %s is not copied: the destination has a run %s of cluster %s", rec.Run, rec.Cluster, rec.Run, c)
		}
		if rec.Event != nil && rec.Event.SnapshotID != "" {
			id, ok := copyOf(rec.Event.SnapshotID)
			if !ok {
				continue
			}
			ev := *rec.Event
			ev.SnapshotID = id
			rec.Event = &ev
		}
		k := recordKey(rec)
		if have[k] {
			continue
		}
		if _, err := dst.SaveJSON(ctx, repo.RunFile, rec); err != nil {
			return n, fmt.Errorf("copy record of run %s: %w", rec.Run, err)
		}
		have[k] = true
		n++
	}
	return n, nil
}

// recordKey identifies a record by its content: a record's file id does not,
// since every encryption of it differs.
func recordKey(rec record) string {
	b, _ := json.Marshal(rec) // a record always marshals
	return string(b)
}
