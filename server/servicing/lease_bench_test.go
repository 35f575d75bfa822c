package servicing_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/server/servicing/servicingtest"
)

// BenchmarkLease measures leases per second against the floor of bare etcd
// transactions of the same shape (compares, two puts) in the same run.
func BenchmarkLease(b *testing.B) {
	env := servicingtest.New(b, servicingtest.Options{})
	ctx := context.Background()
	env.Update(b, "cu", osvcv1.Classification_CLASSIFICATION_CUMULATIVE_UPDATE, month(10))
	lease := env.Connect(b, "ps1-a", "PS1", 1<<20, 60*time.Second)
	runs := make([]string, b.N)
	for i := range runs {
		img := env.Image(b, fmt.Sprintf("img-%d", i), "PS1", 1)
		_, run, err := env.Service.CreateSchedule(ctx, img.GetName(), &osvcv1.Schedule{Updates: []string{"updates/cu"}}, false)
		if err != nil {
			b.Fatal(err)
		}
		runs[i] = run.GetName()
	}

	b.ResetTimer()
	start := time.Now()
	for _, run := range runs {
		if _, err := env.Service.Lease(ctx, run, 0, agent, int64(lease)); err != nil {
			b.Fatal(err)
		}
	}
	leases := time.Since(start)
	b.StopTimer()

	client := env.Store.Client()
	value := string(make([]byte, 512))
	start = time.Now()
	for i := range b.N {
		key := fmt.Sprintf("%sbench/%d", env.Store.Prefix(), i)
		if _, err := client.Txn(ctx).
			If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
			Then(clientv3.OpPut(key, value), clientv3.OpPut(key+"/b", value)).
			Commit(); err != nil {
			b.Fatal(err)
		}
	}
	floor := time.Since(start)

	b.ReportMetric(float64(b.N)/leases.Seconds(), "leases/s")
	b.ReportMetric(float64(b.N)/floor.Seconds(), "txn/s")
	b.ReportMetric(floor.Seconds()/leases.Seconds(), "lease/txn-ratio")
}
