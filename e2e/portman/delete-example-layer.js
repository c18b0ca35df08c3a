// The suite creates the spec's example layer, which createSegment's fixture
// (create-example-layer.js) has made by then, or an earlier run left: delete
// it first. It is empty: deleteSegment, which runs before the layers,
// deleted the segment example in it (and createSegment's fixture deletes
// one that a broken run left).
pm.sendRequest({
  url: pm.collectionVariables.get('baseUrl') + '/layers/CHECKOUT_EXPERIMENTS',
  method: 'DELETE',
  header: { Authorization: 'Bearer ' + pm.environment.get('token') },
}, (err, res) => {
  if (err || (res.code !== 204 && res.code !== 404)) {
    throw new Error('deleting CHECKOUT_EXPERIMENTS: ' + (err || res.code));
  }
});
