// The segment example puts AVITO_VOICE_MESSAGES in the spec's example layer,
// CHECKOUT_EXPERIMENTS; create that layer if it does not exist yet (409
// means it does). Variations do not run their operation's scripts: those
// that need the layer (createSegment's and createLayer's taken slugs) run
// this one themselves.
pm.sendRequest({
  url: pm.collectionVariables.get('baseUrl') + '/layers',
  method: 'POST',
  header: { 'Content-Type': 'application/json', Authorization: 'Bearer ' + pm.environment.get('token') },
  body: { mode: 'raw', raw: JSON.stringify({ slug: 'CHECKOUT_EXPERIMENTS' }) },
}, (err, res) => {
  if (err || (res.code !== 201 && res.code !== 409)) {
    throw new Error('creating CHECKOUT_EXPERIMENTS: ' + (err || res.code));
  }
});
