// The demo page's script, written as a user of the replaced Spring system would: SockJS at
// /sockjs with the legacy stomp.js 2.3.3 client on top.
(function () {
  var $ = function (id) { return document.getElementById(id); };
  if (window.libsMissing || typeof SockJS === 'undefined' || typeof Stomp === 'undefined') {
    $('missing').hidden = false;
    $('connect').disabled = true;
    return;
  }
  var client = null;
  window.demoReceived = [];
  $('connect').onclick = function () {
    if (client) { try { client.disconnect(); } catch (e) {} }
    var socket = new SockJS('/sockjs');
    client = Stomp.over(socket);
    client.debug = null;
    $('status').textContent = 'connecting';
    client.connect({ userid: $('userid').value }, function () {
      $('status').textContent = 'connected as ' + $('userid').value;
      client.subscribe('/user/queue/notice', function (message) {
        window.demoReceived.push(message.body);
        var li = document.createElement('li');
        li.textContent = new Date().toLocaleTimeString() + '  ' + message.body;
        $('messages').appendChild(li);
      });
    }, function (error) {
      $('status').textContent = 'error: ' + (error && error.body ? error.body : error);
    });
  };
  $('publish').onsubmit = function (ev) {
    ev.preventDefault();
    fetch('/api/v1/tenants/default/publish', {
      method: 'POST',
      headers: { 'Authorization': 'Bearer ' + $('apikey').value, 'Content-Type': 'application/json' },
      body: JSON.stringify({ receiver: $('receiver').value, destination: '/queue/notice', content: $('content').value })
    }).then(function (r) { return r.text().then(function (t) { $('result').textContent = r.status + ' ' + t; }); })
      .catch(function (e) { $('result').textContent = 'failed: ' + e; });
  };
})();
