package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"slices"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/timestamppb"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/server/catalog"
	"github.com/osvc/osvc/server/content"
	"github.com/osvc/osvc/server/servicing"
	"github.com/osvc/osvc/server/store"
)

// The catalog benchmark's shape: -n updates spread over these builds and
// architectures (and a few neutral ones for any build), catalogImages images,
// catalogRuns ended runs spread over the images.
const (
	catalogImages   = 50
	catalogRuns     = 5000
	catalogPageSize = 100
	// catalogInstalled packages of its own architecture and build are
	// installed in each image, so applicability reads supersedence too.
	catalogInstalled = 3
)

var (
	catalogBuilds = []uint32{17763, 19044, 19045, 20348, 22000, 22621, 22631, 25398, 26100, 26200}
	catalogArchs  = []osvcv1.Architecture{
		osvcv1.Architecture_ARCHITECTURE_X64, osvcv1.Architecture_ARCHITECTURE_X86, osvcv1.Architecture_ARCHITECTURE_ARM64,
	}
)

// keyCounter counts the keys etcd returns to a client: every range, alone or
// in a transaction, keys-only or not.
type keyCounter struct{ n atomic.Int64 }

func (k *keyCounter) intercept(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	err := invoker(ctx, method, req, reply, cc, opts...)
	switch r := reply.(type) {
	case *etcdserverpb.RangeResponse:
		k.n.Add(int64(len(r.GetKvs())))
	case *etcdserverpb.TxnResponse:
		for _, op := range r.GetResponses() {
			k.n.Add(int64(len(op.GetResponseRange().GetKvs())))
		}
	}
	return err
}

// pageSample is one page read: how long it took and how many keys it read.
type pageSample struct {
	took time.Duration
	keys int64
}

// benchCatalog times the lists that used to scan the whole catalog, on a
// catalog of -n updates, 50 images and 5,000 ended runs: every page (of
// 100) of ListApplicableUpdates and of ListRuns of each image, with the etcd
// keys each page read. The floor is a bare etcd range of the same number of
// keys, timed right after each page on the same etcd: the ratio says what
// the list costs beyond reading what it must.
func benchCatalog(ctx context.Context, cfg benchConfig) (*Result, error) {
	e, err := startBenchEtcd(ctx, cfg)
	if err != nil {
		return nil, err
	}
	defer e.close()
	var keys keyCounter
	counted, err := clientv3.New(clientv3.Config{
		Endpoints: e.etcd.Endpoints(), DialTimeout: etcdClientTimeout, Logger: zap.NewNop(),
		DialOptions: []grpc.DialOption{grpc.WithChainUnaryInterceptor(keys.intercept)},
	})
	if err != nil {
		return nil, fmt.Errorf("etcd client: %w", err)
	}
	defer counted.Close()
	libDir, err := os.MkdirTemp("", "osvc-bench-content-*")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(libDir)
	st, err := store.New(store.Config{Client: counted, Logger: cfg.Logger})
	if err != nil {
		return nil, err
	}
	lib, err := content.New(content.Config{Dir: libDir, Store: st, Logger: cfg.Logger})
	if err != nil {
		return nil, err
	}
	cat, err := catalog.New(catalog.Config{Store: st, Library: lib, Logger: cfg.Logger})
	if err != nil {
		return nil, err
	}
	svc, err := servicing.New(servicing.Config{Store: st, Catalog: cat, Library: lib, Logger: cfg.Logger})
	if err != nil {
		return nil, err
	}

	start := time.Now()
	updates, err := fillCatalog(ctx, cat, cfg.N)
	if err != nil {
		return nil, err
	}
	images, err := putCatalogImages(ctx, st, updates)
	if err != nil {
		return nil, err
	}
	if err := putEndedRuns(ctx, st, images); err != nil {
		return nil, err
	}
	fmt.Fprintf(cfg.Out, "catalog: %d updates, %d images, %d ended runs stored in %s\n", len(updates), len(images), catalogRuns, time.Since(start).Round(time.Millisecond))

	floor := func(n int64) (time.Duration, error) {
		t := time.Now()
		_, err := e.client.Get(ctx, st.UpdatesPrefix(), clientv3.WithPrefix(), clientv3.WithLimit(max(n, 1)))
		return time.Since(t), err
	}
	var applicable, runs, applicableFloor, runsFloor []pageSample
	for _, img := range images {
		token := ""
		for {
			before, t := keys.n.Load(), time.Now()
			_, next, err := cat.ListApplicableUpdates(ctx, img.GetName(), nil, false, catalogPageSize, token)
			if err != nil {
				return nil, fmt.Errorf("applicable updates of %s: %w", img.GetName(), err)
			}
			s := pageSample{took: time.Since(t), keys: keys.n.Load() - before}
			f, err := floor(s.keys)
			if err != nil {
				return nil, err
			}
			applicable, applicableFloor = append(applicable, s), append(applicableFloor, pageSample{took: f, keys: s.keys})
			if token = next; token == "" {
				break
			}
		}
		for {
			before, t := keys.n.Load(), time.Now()
			_, next, err := svc.ListRuns(ctx, img.GetName(), catalogPageSize, token)
			if err != nil {
				return nil, fmt.Errorf("runs of %s: %w", img.GetName(), err)
			}
			s := pageSample{took: time.Since(t), keys: keys.n.Load() - before}
			f, err := floor(s.keys)
			if err != nil {
				return nil, err
			}
			runs, runsFloor = append(runs, s), append(runsFloor, pageSample{took: f, keys: s.keys})
			if token = next; token == "" {
				break
			}
		}
	}
	appFig, appFloor := pageFigure("ListApplicableUpdates page", applicable), pageFigure("bare etcd range of as many keys", applicableFloor)
	runsFig, runsFloorFig := pageFigure("ListRuns(image) page", runs), pageFigure("bare etcd range of as many keys (ListRuns)", runsFloor)
	for _, l := range []struct {
		name   string
		pages  []pageSample
		f, flr Figure
	}{{"ListApplicableUpdates", applicable, appFig, appFloor}, {"ListRuns(image)", runs, runsFig, runsFloorFig}} {
		fmt.Fprintf(cfg.Out, "catalog: %s: %d pages of %d, p50 %.3g ms, p99 %.3g ms; keys read per page p50 %d, max %d; floor p50 %.3g ms; ratio %.3g\n",
			l.name, len(l.pages), catalogPageSize, l.f.P50Ms, l.f.P99Ms, keysPercentile(l.pages, 0.5), keysPercentile(l.pages, 1), l.flr.P50Ms, l.f.Value/l.flr.Value)
	}
	runsFig.Name += " against a bare range of as many keys"
	runsFig.Ratio = runsFig.Value / runsFloorFig.Value
	return &Result{Osvc: appFig, Floor: appFloor, Extra: []Figure{runsFig}}, nil
}

// pageFigure is the median page time in milliseconds, with p50 and p99.
func pageFigure(name string, pages []pageSample) Figure {
	lats := make([]time.Duration, len(pages))
	samples := make([]float64, len(pages))
	for i, p := range pages {
		lats[i], samples[i] = p.took, millis(p.took)
	}
	return Figure{Name: name, Unit: "ms", Value: median(samples), Samples: samples,
		P50Ms: millis(percentile(lats, 0.5)), P99Ms: millis(percentile(lats, 0.99))}
}

func keysPercentile(pages []pageSample, p float64) int64 {
	n := make([]int64, len(pages))
	for i, s := range pages {
		n[i] = s.keys
	}
	slices.Sort(n)
	if len(n) == 0 {
		return 0
	}
	return n[min(int(p*float64(len(n))), len(n)-1)]
}

// fillCatalog records n updates through the catalog (with their indexes),
// each of one architecture and build in turn, one in twenty neutral for any
// build, from 8 workers.
func fillCatalog(ctx context.Context, cat *catalog.Catalog, n int) ([]*osvcv1.Update, error) {
	out := make([]*osvcv1.Update, n)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(8)
	released := time.Date(2020, 1, 14, 0, 0, 0, 0, time.UTC)
	for i := range n {
		g.Go(func() error {
			sum := sha256.Sum256(fmt.Appendf(nil, "update %d", i))
			u := &osvcv1.Update{
				Name:           fmt.Sprintf("updates/u-%06d", i),
				Kb:             fmt.Sprintf("KB%d", 5000000+i),
				Title:          fmt.Sprintf("Update %d", i),
				Classification: osvcv1.Classification_CLASSIFICATION_SECURITY_UPDATE,
				ReleaseTime:    timestamppb.New(released.AddDate(0, 0, i%2000)),
				Files:          []*osvcv1.UpdateFile{{FileName: fmt.Sprintf("u-%d.cab", i), Sha256: hex.EncodeToString(sum[:]), SizeBytes: 1 << 20}},
			}
			if i%20 == 19 {
				u.Architecture = osvcv1.Architecture_ARCHITECTURE_NEUTRAL
				u.PackageIdentity = fmt.Sprintf("Package_for_KB%d~31bf3856ad364e35~neutral~~1.0.0.0", 5000000+i)
			} else {
				arch, build := catalogTarget(i)
				u.Architecture, u.ApplicableBuilds = arch, []uint32{build}
				u.PackageIdentity = fmt.Sprintf("Package_for_KB%d~31bf3856ad364e35~%s~~%d.1.0.0", 5000000+i, packageArch(arch), build)
			}
			stored, err := cat.RecordUpdate(gctx, u)
			out[i] = stored
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return nil, fmt.Errorf("fill the catalog: %w", err)
	}
	return out, nil
}

// catalogTarget is the architecture and build of update (or image) i.
func catalogTarget(i int) (osvcv1.Architecture, uint32) {
	return catalogArchs[i%len(catalogArchs)], catalogBuilds[(i/len(catalogArchs))%len(catalogBuilds)]
}

func packageArch(a osvcv1.Architecture) string {
	switch a {
	case osvcv1.Architecture_ARCHITECTURE_X64:
		return "amd64"
	case osvcv1.Architecture_ARCHITECTURE_ARM64:
		return "arm64"
	}
	return "x86"
}

// putCatalogImages records the images, each of one architecture and build
// with catalogInstalled of its updates installed.
func putCatalogImages(ctx context.Context, st *store.Store, updates []*osvcv1.Update) ([]*osvcv1.Image, error) {
	images := make([]*osvcv1.Image, 0, catalogImages)
	for j := range catalogImages {
		arch, build := catalogTarget(j)
		idx := &osvcv1.ImageIndex{Index: 1, Name: "Windows", Architecture: arch, Build: build, Version: fmt.Sprintf("10.0.%d.1", build)}
		for _, u := range updates {
			if len(idx.InstalledUpdates) == catalogInstalled {
				break
			}
			if u.GetArchitecture() == arch && slices.Contains(u.GetApplicableBuilds(), build) {
				idx.InstalledUpdates = append(idx.InstalledUpdates, &osvcv1.InstalledUpdate{
					PackageIdentity: u.GetPackageIdentity(), Kb: u.GetKb(), Update: u.GetName(), State: "Installed"})
			}
		}
		img, err := putImage(ctx, st, fmt.Sprintf("image-%02d", j), "PS1")
		if err != nil {
			return nil, err
		}
		img.Indexes = []*osvcv1.ImageIndex{idx}
		if _, err := st.Put(ctx, st.ImageKey(fmt.Sprintf("image-%02d", j)), img); err != nil {
			return nil, err
		}
		images = append(images, img)
	}
	return images, nil
}

// putEndedRuns stores catalogRuns ended runs over the images with their
// index keys, as servicing writes them, thirty to a transaction.
func putEndedRuns(ctx context.Context, st *store.Store, images []*osvcv1.Image) error {
	ended := time.Now().Add(-time.Hour)
	for i := 0; i < catalogRuns; i += 30 {
		var ops []clientv3.Op
		for k := i; k < min(i+30, catalogRuns); k++ {
			img := images[k%len(images)]
			imageID, _ := catalog.ImageID(img.GetName())
			runID := fmt.Sprintf("r-%06d", k)
			run := &osvcv1.Run{Name: servicing.RunName(runID), Image: img.GetName(), State: osvcv1.RunState_RUN_STATE_SUCCEEDED,
				Updates: []string{"updates/u-000000"}, CreateTime: timestamppb.New(ended), EndTime: timestamppb.New(ended), LogLineCount: 40}
			data, err := st.Marshal(run)
			if err != nil {
				return err
			}
			ops = append(ops, clientv3.OpPut(st.RunKey(runID), string(data)),
				clientv3.OpPut(st.ImageRunKey(imageID, runID), ""), clientv3.OpPut(st.EndedRunKey(ended, runID), ""))
		}
		if _, err := st.Client().Txn(ctx).Then(ops...).Commit(); err != nil {
			return fmt.Errorf("store ended runs: %w", err)
		}
	}
	return nil
}
